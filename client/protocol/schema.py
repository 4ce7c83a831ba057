"""attrs message classes to and from CBOR bodies (maps keyed by field name).

Decoding checks every field against the class's annotations (int, bool, str, bytes,
`X | None`, `tuple[X, ...]`, nested attrs classes) before building anything, so a
peer's bad body is a KafkaError(INVALID_REQUEST) naming the field, never a
half-built message. Unknown keys are ignored (a newer peer may send more); missing
keys take the field's default, or are an error if it has none.
"""

from __future__ import annotations

import enum
import types
import typing
from functools import cache
from typing import Any, TypeVar, cast

import attrs

from client.protocol.errors import ErrorCode, KafkaError

T = TypeVar("T")

# No list in a request holds more items (checked before any is looked at): a 2 MB
# request naming a million topics must cost milliseconds, not the event loop's minute.
LIST_ITEMS_MAX = 100_000


class SchemaError(KafkaError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_REQUEST, message)


def to_body(message: Any) -> Any:
    """A message (or a value inside one) as plain CBOR-able data."""
    if attrs.has(type(message)):
        return {f.name: to_body(getattr(message, f.name)) for f in attrs.fields(type(message))}
    if isinstance(message, tuple | list):
        return [to_body(item) for item in message]
    if isinstance(message, enum.IntEnum):
        return int(message)
    if isinstance(message, dict):
        return {key: to_body(value) for key, value in message.items()}
    return message


@cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_body(cls: type[T], body: Any, where: str = "") -> T:
    where = where or cls.__name__
    if not isinstance(body, dict):
        raise SchemaError(f"{where}: expected a map, got {type(body).__name__}")
    hints = _hints(cast(Any, cls))
    values: dict[str, Any] = {}
    for field in attrs.fields(cls):  # type: ignore[arg-type]
        if field.name not in body:
            if field.default is attrs.NOTHING:
                raise SchemaError(f"{where}.{field.name} is missing")
            continue
        values[field.name] = _value(hints[field.name], body[field.name], f"{where}.{field.name}")
    return cls(**values)


def _value(annotation: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _value(inner, value, where)
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list, got {type(value).__name__}")
        if len(value) > LIST_ITEMS_MAX:
            raise SchemaError(f"{where}: {len(value)} items, more than {LIST_ITEMS_MAX}")
        return tuple(_value(item_type, item, f"{where}[{i}]") for i, item in enumerate(value))
    if attrs.has(annotation):
        return from_body(annotation, value, where)
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is bytes:
        if isinstance(value, bytes):
            return value
    elif annotation is Any:
        return value
    else:
        raise TypeError(f"{where}: no schema rule for {annotation!r}")
    raise SchemaError(f"{where}: expected {annotation.__name__}, got {type(value).__name__}")
