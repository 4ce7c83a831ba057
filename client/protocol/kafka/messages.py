"""The generated message classes by name: `messages.ProduceRequest`, `messages.RequestHeader`.

The classes are built from Kafka's definitions when `codec` is imported (see
`compiler.py`); nested structs are attributes of their message's class
(`messages.ProduceRequest.TopicProduceData`). Each class is frozen, keyword-only, and
holds every field of every version of its message, with Kafka's defaults.
"""

from __future__ import annotations

from typing import Any

from client.protocol.kafka import codec


def _by_name() -> dict[str, Any]:
    classes: dict[str, Any] = {
        "RequestHeader": codec.RequestHeader,
        "ResponseHeader": codec.ResponseHeader,
    }
    for api in codec.APIS.values():
        classes[api.request.spec.name] = api.request.root
        classes[api.response.spec.name] = api.response.root
    return classes


_CLASSES = _by_name()


def __getattr__(name: str) -> Any:
    try:
        return _CLASSES[name]
    except KeyError:
        raise AttributeError(f"no Kafka message named {name!r}") from None


def names() -> list[str]:
    return sorted(_CLASSES)
