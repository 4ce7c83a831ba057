"""The codec's errors, split by blame (h11's model).

`KafkaCodecError`: the peer's bytes break Kafka's protocol. The caller closes that
connection (or, for an unsupported version it can still answer, answers with an error
code) and keeps serving the others. Its message is bounded: it never quotes more than a
few bytes of what the peer sent.

`KafkaEncodeError`: we were asked to put on the wire a value the chosen version cannot
carry (a non-default value in a field the version lacks, a null where the version does
not allow one, an integer out of its type's range). That is a bug on our side, or a
handler answering with something the client's version cannot see, never the peer's
fault; Kafka raises UnsupportedVersionException in the same places.
"""

from __future__ import annotations

# How much of a peer-influenced message an error may quote.
MESSAGE_CHARS_MAX = 200


def _bounded(message: str) -> str:
    line = message.replace("\n", " ")
    return line if len(line) <= MESSAGE_CHARS_MAX else line[: MESSAGE_CHARS_MAX - 3] + "..."


class KafkaCodecError(Exception):
    """The peer sent bytes that are not a valid Kafka frame, header or body."""

    def __init__(self, message: str) -> None:
        super().__init__(_bounded(message))


class FrameTooLarge(KafkaCodecError):
    """A frame's size prefix is over the limit (`socket_request_max_bytes`)."""


class UnsupportedApi(KafkaCodecError):
    """A request for an (api_key, api_version) this codec has no definition for.

    The fixed part of the request header (api key, version, correlation id: the first
    8 bytes in every header version) was read, so a listener can still answer:
    Kafka answers an ApiVersions request of a version it does not know with an
    ApiVersions v0 response carrying UNSUPPORTED_VERSION, and closes the connection
    for anything else.
    """

    def __init__(self, message: str, *, api_key: int, api_version: int, correlation_id: int):
        super().__init__(message)
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id


class KafkaEncodeError(ValueError):
    """A value that the requested message version cannot carry (our bug, not the peer's)."""
