"""Raft messages on the wire: api keys (Kafka's numbers) and validated CBOR bodies.

A body is the list of a message's fields in declaration order. Decoding checks the
count and every field's type against the class's declared annotation before a
message is built, and the message checks each value against its Kafka type (int32
epochs and ids, int64 offsets): a peer's bad body is INVALID_REQUEST, never a
half-built object. Whether a well-typed value makes sense (a voter's id, an epoch a
node can act on) is the core's question, asked before it changes any state.
"""

from __future__ import annotations

from typing import Any

import attrs

from client.protocol.errors import ErrorCode, KafkaError
from client.protocol.framing import preview
from kraft.raft.messages import (
    BeginQuorumEpochRequest,
    BeginQuorumEpochResponse,
    EndQuorumEpochRequest,
    EndQuorumEpochResponse,
    FetchRequest,
    FetchResponse,
    FetchSnapshotRequest,
    FetchSnapshotResponse,
    OffsetAndEpoch,
    Request,
    Response,
    VoteRequest,
    VoteResponse,
)

# Kafka's api keys for the KRaft RPCs.
API_FETCH = 1
API_VOTE = 52
API_BEGIN_QUORUM_EPOCH = 53
API_END_QUORUM_EPOCH = 54
API_FETCH_SNAPSHOT = 59
API_VERSION = 0

REQUEST_TYPES: dict[int, tuple[type[Any], type[Any]]] = {
    API_FETCH: (FetchRequest, FetchResponse),
    API_VOTE: (VoteRequest, VoteResponse),
    API_BEGIN_QUORUM_EPOCH: (BeginQuorumEpochRequest, BeginQuorumEpochResponse),
    API_END_QUORUM_EPOCH: (EndQuorumEpochRequest, EndQuorumEpochResponse),
    API_FETCH_SNAPSHOT: (FetchSnapshotRequest, FetchSnapshotResponse),
}
API_KEY_OF = {request: key for key, (request, _) in REQUEST_TYPES.items()}


def _encode_value(value: Any) -> Any:
    if isinstance(value, OffsetAndEpoch):
        return [value.offset, value.epoch]
    if isinstance(value, tuple):
        return list(value)
    return value


def encode(message: Request | Response) -> list[Any]:
    return [_encode_value(getattr(message, field.name)) for field in attrs.fields(type(message))]


def _check(annotation: str, value: Any, name: str) -> Any:
    def fail() -> KafkaError:
        return KafkaError(
            ErrorCode.INVALID_REQUEST, f"field {name}: {preview(value)} is not {annotation}"
        )

    if annotation == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail()
        return value
    if annotation == "bool":
        if not isinstance(value, bool):
            raise fail()
        return value
    if annotation == "str":
        if not isinstance(value, str):
            raise fail()
        return value
    if annotation == "bytes":
        if not isinstance(value, bytes):
            raise fail()
        return value
    if annotation == "tuple[int, ...]":
        if not isinstance(value, list) or not all(
            isinstance(item, int) and not isinstance(item, bool) for item in value
        ):
            raise fail()
        return tuple(value)
    if annotation == "OffsetAndEpoch | None":
        if value is None:
            return None
        if not (
            isinstance(value, list)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise fail()
        try:
            return OffsetAndEpoch(offset=value[0], epoch=value[1])
        except ValueError as error:
            raise KafkaError(ErrorCode.INVALID_REQUEST, f"field {name}: {error}") from None
    if annotation == "OffsetAndEpoch":
        decoded = _check("OffsetAndEpoch | None", value, name)
        if decoded is None:
            raise fail()
        return decoded
    raise AssertionError(f"no wire rule for annotation {annotation!r}")


def decode(kind: type[Any], body: Any) -> Any:
    fields = attrs.fields(kind)
    if not isinstance(body, list) or len(body) != len(fields):
        raise KafkaError(
            ErrorCode.INVALID_REQUEST,
            f"{kind.__name__} body must be a list of {len(fields)} fields",
        )
    values = {
        field.name: _check(str(field.type), value, field.name)
        for field, value in zip(fields, body, strict=True)
    }
    try:
        return kind(**values)
    except ValueError as error:  # a value outside its Kafka type (the message's validators)
        raise KafkaError(ErrorCode.INVALID_REQUEST, f"{kind.__name__}: {error}") from None


def decode_request(api_key: int, version: int, body: Any) -> Request:
    kinds = REQUEST_TYPES.get(api_key)
    if kinds is None or version != API_VERSION:
        raise KafkaError(ErrorCode.UNSUPPORTED_VERSION, f"api {api_key} v{version}")
    request: Request = decode(kinds[0], body)
    return request


def decode_response(request: Request, body: Any) -> Response:
    if isinstance(body, dict) and "error_code" in body:
        raise KafkaError(int(body["error_code"]), str(body.get("error_message", "")))
    response: Response = decode(REQUEST_TYPES[API_KEY_OF[type(request)]][1], body)
    return response
