"""Kafka's binary protocol: requests and responses to and from frames (sans-I/O).

The small API the rest of pykraft sees (decision 0010):

    decode_request(frame) -> (header, request)          # a broker reading
    encode_response(header, api_key, api_version, response) -> bytearray
    encode_response_parts(header, api_key, api_version, response) -> [buffer, ...]
    encode_request(header, request) -> bytearray        # a client writing
    decode_response(frame, api_key, api_version) -> (header, response)
    APIS: {api_key: ApiSpec}                            # what the codec can handle

A `frame` is one request or response without its 4-byte size prefix (what
`KafkaFrameDecoder` yields); the encoders return the whole frame, size prefix included,
ready for one `send_all`. Message objects are the frozen attrs classes generated from
Kafka's definitions (`request_class(api_key)`, `response_class(api_key)`; nested
structs are attributes of the top class: `ProduceRequest.TopicProduceData`), one
class per message across all its versions, as Kafka's `*Data` classes.

Headers (KIP-482): a request whose API version is flexible carries request header v2
(tagged fields after the client id), else v1; a response header is v1 when its
version is flexible, else v0, except ApiVersions, whose response header is always v0
(a client that does not yet know the broker's versions must read it). Records fields
are raw bytes, copied out of the frame and never re-encoded.

Decoding a peer's bytes raises `KafkaCodecError` and nothing else; trailing bytes after
a body are refused too (the frame's size said they belong to this message).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import attrs

from client.protocol.kafka import definitions, wire
from client.protocol.kafka.compiler import MessageCodec
from client.protocol.kafka.definitions import MessageSpec, Versions
from client.protocol.kafka.errors import KafkaCodecError, KafkaEncodeError, UnsupportedApi

API_VERSIONS_KEY = 18
# api key, api version, correlation id: the first 8 bytes of every request header version.
_REQUEST_HEADER_FIXED = struct.Struct(">hhi")
_SIZE = struct.Struct(">i")
# What a malformed body can make the generated decoders raise besides KafkaCodecError:
# struct.error for a read past the end; the rest are kept as a net.
_DECODE_FAILURES = (struct.error, IndexError, ValueError, OverflowError, UnicodeDecodeError)


@attrs.frozen(kw_only=True, eq=False)
class ApiSpec:
    api_key: int
    name: str  # "Produce"
    versions: Versions  # the stable versions of the definition (an unstable latest left out)
    flexible_versions: Versions
    listeners: tuple[str, ...]  # as the definition names them ("broker", "controller")
    request: MessageCodec
    response: MessageCodec

    def flexible(self, version: int) -> bool:
        return version in self.flexible_versions

    def request_header_version(self, version: int) -> int:
        return 2 if self.flexible(version) else 1

    def response_header_version(self, version: int) -> int:
        if self.api_key == API_VERSIONS_KEY:
            return 0
        return 1 if self.flexible(version) else 0


def _build() -> tuple[dict[int, ApiSpec], MessageCodec, MessageCodec]:
    specs = definitions.load_all()
    apis: dict[int, ApiSpec] = {}
    for name, spec in specs.items():
        if spec.kind != "request":
            continue
        response_spec = specs[name.removesuffix("Request") + "Response"]
        assert spec.api_key is not None and spec.api_key == response_spec.api_key, name
        apis[spec.api_key] = ApiSpec(
            api_key=spec.api_key,
            name=name.removesuffix("Request"),
            versions=_stable(spec).intersect(response_spec.valid_versions),
            flexible_versions=spec.flexible_versions,
            listeners=spec.listeners,
            request=MessageCodec(spec),
            response=MessageCodec(response_spec),
        )
    return apis, MessageCodec(specs["RequestHeader"]), MessageCodec(specs["ResponseHeader"])


def _stable(spec: MessageSpec) -> Versions:
    versions = spec.valid_versions
    if spec.latest_version_unstable:
        return Versions(versions.low, versions.high - 1)
    return versions


APIS: Mapping[int, ApiSpec]
_apis, REQUEST_HEADER, RESPONSE_HEADER = _build()
APIS = _apis
RequestHeader: Any = REQUEST_HEADER.root
ResponseHeader: Any = RESPONSE_HEADER.root


def _attach_nested_classes() -> None:
    for api in _apis.values():
        for message in (api.request, api.response):
            for name, cls in message.classes.items():
                if cls is not message.root:
                    setattr(message.root, name, cls)


_attach_nested_classes()


def request_class(api_key: int) -> Any:
    return APIS[api_key].request.root


def response_class(api_key: int) -> Any:
    return APIS[api_key].response.root


def _api(api_key: int, api_version: int, correlation_id: int) -> ApiSpec:
    api = APIS.get(api_key)
    if api is None:
        raise UnsupportedApi(
            f"unknown api key {api_key}",
            api_key=api_key,
            api_version=api_version,
            correlation_id=correlation_id,
        )
    if api_version not in api.versions:
        raise UnsupportedApi(
            f"{api.name} v{api_version} is outside v{api.versions.low}-{api.versions.high}",
            api_key=api_key,
            api_version=api_version,
            correlation_id=correlation_id,
        )
    return api


def _view(frame: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(frame)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


# ---------------------------------------------------------------------- broker side


def decode_request(frame: bytes | bytearray | memoryview) -> tuple[Any, Any]:
    """A request frame (without its size prefix) -> (RequestHeader, request)."""
    buf = _view(frame)
    if len(buf) < _REQUEST_HEADER_FIXED.size:
        raise KafkaCodecError(f"request of {len(buf)} bytes is shorter than a request header")
    api_key, api_version, correlation_id = _REQUEST_HEADER_FIXED.unpack_from(buf, 0)
    api = _api(api_key, api_version, correlation_id)
    try:
        header, pos = REQUEST_HEADER.decoder(api.request_header_version(api_version))(buf, 0)
        request, pos = api.request.decoder(api_version)(buf, pos)
    except _DECODE_FAILURES as error:
        raise KafkaCodecError(f"{api.name} v{api_version} request: {error}") from None
    if pos != len(buf):
        raise KafkaCodecError(
            f"{api.name} v{api_version} request: {len(buf) - pos} bytes after the body"
        )
    return header, request


def encode_response(header: Any, api_key: int, api_version: int, response: Any) -> bytearray:
    """The whole response frame, size prefix included."""
    api = APIS[api_key]
    assert api_version in api.versions, (api.name, api_version)
    return _encode(
        RESPONSE_HEADER, api.response_header_version(api_version), header,
        api.response, api_version, response,
    )  # fmt: skip


def encode_response_parts(
    header: Any, api_key: int, api_version: int, response: Any
) -> list[bytes | bytearray | memoryview]:
    """The frame of `encode_response` as buffers to send back to back, each bytes or
    records field of `wire.PART_BYTES_MIN` or more one of them, uncopied (a Fetch
    answer's records as the log read them)."""
    api = APIS[api_key]
    assert api_version in api.versions, (api.name, api_version)
    out = wire.FrameParts(bytes(_SIZE.size))
    _encode_into(RESPONSE_HEADER, api.response_header_version(api_version), header, out)
    _encode_into(api.response, api_version, response, out)
    parts = out.finish()
    first = parts[0]
    assert isinstance(first, bytearray) and len(first) >= _SIZE.size
    _SIZE.pack_into(first, 0, sum(map(len, parts)) - _SIZE.size)
    return parts


# ---------------------------------------------------------------------- client side


def encode_request(header: Any, request: Any) -> bytearray:
    """The whole request frame, size prefix included; the header names api and version."""
    api = APIS[header.request_api_key]
    version = header.request_api_version
    assert version in api.versions, (api.name, version)
    return _encode(
        REQUEST_HEADER, api.request_header_version(version), header, api.request, version, request
    )


def decode_response(
    frame: bytes | bytearray | memoryview, api_key: int, api_version: int
) -> tuple[Any, Any]:
    """A response frame (without its size prefix) to the request (api_key, api_version)."""
    try:
        return _decode_response(_view(frame), api_key, api_version)
    except KafkaCodecError:
        if api_key != API_VERSIONS_KEY or api_version == 0:
            raise
        # A broker that does not know our ApiVersions version answers with a v0 body
        # (UNSUPPORTED_VERSION and its own ranges); Kafka's client reads it as v0 the
        # same way, after the version it asked for failed.
        return _decode_response(_view(frame), api_key, 0)


def _decode_response(buf: memoryview, api_key: int, api_version: int) -> tuple[Any, Any]:
    api = APIS[api_key]
    assert api_version in api.versions, (api.name, api_version)
    try:
        header, pos = RESPONSE_HEADER.decoder(api.response_header_version(api_version))(buf, 0)
        response, pos = api.response.decoder(api_version)(buf, pos)
    except _DECODE_FAILURES as error:
        raise KafkaCodecError(f"{api.name} v{api_version} response: {error}") from None
    if pos != len(buf):
        raise KafkaCodecError(
            f"{api.name} v{api_version} response: {len(buf) - pos} bytes after the body"
        )
    return header, response


# ---------------------------------------------------------------------- bodies alone


def encode_body(codec: MessageCodec, version: int, message: Any) -> bytearray:
    """One message without header or size prefix (tests, and bodies inside bodies)."""
    out = bytearray()
    _encode_into(codec, version, message, out)
    return out


def decode_body(codec: MessageCodec, version: int, data: bytes | bytearray | memoryview) -> Any:
    buf = _view(data)
    try:
        message, pos = codec.decoder(version)(buf, 0)
    except _DECODE_FAILURES as error:
        raise KafkaCodecError(f"{codec.spec.name} v{version}: {error}") from None
    if pos != len(buf):
        raise KafkaCodecError(f"{codec.spec.name} v{version}: {len(buf) - pos} bytes after it")
    return message


def _encode(
    header_codec: MessageCodec,
    header_version: int,
    header: Any,
    codec: MessageCodec,
    version: int,
    message: Any,
) -> bytearray:
    out = bytearray(_SIZE.size)
    _encode_into(header_codec, header_version, header, out)
    _encode_into(codec, version, message, out)
    _SIZE.pack_into(out, 0, len(out) - _SIZE.size)
    return out


def _encode_into(codec: MessageCodec, version: int, message: Any, out: bytearray) -> None:
    if not isinstance(message, codec.root):
        raise KafkaEncodeError(f"expected a {codec.spec.name}, got {type(message).__name__}")
    try:
        codec.encoder(version)(message, out)
    except (struct.error, OverflowError) as error:
        raise KafkaEncodeError(f"{codec.spec.name} v{version}: {error}") from None
