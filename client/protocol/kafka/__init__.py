"""Kafka's binary protocol, generated from Kafka's own message definitions (decision 0010).

Self-contained: imports only the standard library, attrs and `client.protocol.errors`;
the definitions are the JSON files the installed kafka-python wheel carries.
"""

from client.protocol.kafka.codec import (
    API_VERSIONS_KEY,
    APIS,
    ApiSpec,
    RequestHeader,
    ResponseHeader,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    request_class,
    response_class,
)
from client.protocol.kafka.errors import (
    FrameTooLarge,
    KafkaCodecError,
    KafkaEncodeError,
    UnsupportedApi,
)
from client.protocol.kafka.framing import SOCKET_REQUEST_MAX_BYTES_DEFAULT, KafkaFrameDecoder

__all__ = [
    "APIS",
    "API_VERSIONS_KEY",
    "SOCKET_REQUEST_MAX_BYTES_DEFAULT",
    "ApiSpec",
    "FrameTooLarge",
    "KafkaCodecError",
    "KafkaEncodeError",
    "KafkaFrameDecoder",
    "RequestHeader",
    "ResponseHeader",
    "UnsupportedApi",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "request_class",
    "response_class",
]
