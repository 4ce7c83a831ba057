"""attrs message classes to and from CBOR bodies (maps keyed by field name).

Decoding checks every field against the class's annotations (int, bool, str, bytes,
`X | None`, `tuple[X, ...]`, nested attrs classes) before building anything, so a
peer's bad body is a KafkaError(INVALID_REQUEST) naming the field, never a
half-built message. Unknown keys are ignored (a newer peer may send more); missing
keys take the field's default, or are an error if it has none.
"""

from __future__ import annotations

import enum
import operator
import types
import typing
from collections.abc import Callable
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
    kind = type(message)
    if kind in _PLAIN:
        return message
    encode = _ENCODERS.get(kind)
    if encode is None:
        encode = _ENCODERS[kind] = _encoder(kind)
    return encode(message)


# Values of these exact types are their own body; every other type gets an encoder,
# chosen once per type (the set of types is the program's, so the cache is bounded).
_PLAIN = frozenset({int, str, bytes, bool, float, type(None)})
_ENCODERS: dict[type, Callable[[Any], Any]] = {}


def _encoder(kind: type) -> Callable[[Any], Any]:
    # The order of these checks is the rule: an attrs class first, then sequences, ...
    if attrs.has(kind):
        names = tuple(field.name for field in attrs.fields(kind))
        if not names:
            return lambda _message: {}
        values = operator.attrgetter(*names)
        if len(names) == 1:
            (name,) = names
            return lambda message: {name: to_body(values(message))}

        def encode_attrs(message: Any) -> dict[str, Any]:
            return dict(
                zip(
                    names,
                    [v if type(v) in _PLAIN else to_body(v) for v in values(message)],
                    strict=True,
                )
            )

        return encode_attrs
    if issubclass(kind, tuple | list):
        return lambda message: [v if type(v) in _PLAIN else to_body(v) for v in message]
    if issubclass(kind, enum.IntEnum):
        return int
    if issubclass(kind, dict):
        return lambda message: {key: to_body(value) for key, value in message.items()}
    return _same


def _same(value: Any) -> Any:
    return value


class _Invalid(Exception):
    """A value broke the schema: `problem` says how, `path` where (innermost first).

    The path grows as the error leaves each level, so a body that decodes builds no
    location strings; `from_body` turns it into the error its caller sees.
    """

    def __init__(self, problem: str, error: type[Exception] = SchemaError) -> None:
        super().__init__(problem)
        self.problem = problem
        self.error = error
        self.path: list[str] = []


def from_body(cls: type[T], body: Any, where: str = "") -> T:
    try:
        return cast(T, _decode_attrs(cls, body))
    except _Invalid as invalid:
        location = (where or cls.__name__) + "".join(reversed(invalid.path))
        raise invalid.error(location + invalid.problem) from None


_Decoder = Callable[[Any], Any]
# Per attrs class: (field name, required, decoder) in field order, compiled on first use.
_PLANS: dict[Any, tuple[tuple[str, bool, _Decoder], ...]] = {}


def _decode_attrs(cls: Any, body: Any) -> Any:
    if not isinstance(body, dict):
        raise _Invalid(f": expected a map, got {type(body).__name__}")
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _plan(cls)
    values: dict[str, Any] = {}
    for name, required, decode in plan:
        if name in body:
            try:
                values[name] = decode(body[name])
            except _Invalid as invalid:
                invalid.path.append("." + name)
                raise
        elif required:
            raise _Invalid(f".{name} is missing")
    return cls(**values)


def _plan(cls: Any) -> tuple[tuple[str, bool, _Decoder], ...]:
    hints = typing.get_type_hints(cls)
    return tuple(
        (
            field.name,
            field.default is attrs.NOTHING,
            _decoder(hints[field.name]) if field.name in hints else _no_hint(field.name),
        )
        for field in attrs.fields(cls)
    )


def _no_hint(name: str) -> _Decoder:
    def decode(_value: Any) -> Any:
        raise KeyError(name)

    return decode


def _decoder(annotation: Any) -> _Decoder:
    """The checking decoder of one annotation; unsupported ones fail when used, not here."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _union_decoder(typing.get_args(annotation))
    if origin is tuple:
        return _tuple_decoder(typing.get_args(annotation))
    if attrs.has(annotation):
        return lambda value: _decode_attrs(annotation, value)
    if annotation is int:
        return _decode_int
    if annotation is bool:
        return _decode_bool
    if annotation is str:
        return _decode_str
    if annotation is bytes:
        return _decode_bytes
    if annotation is Any:
        return _same
    return _no_rule(annotation)


def _union_decoder(options: tuple[Any, ...]) -> _Decoder:
    nullable = type(None) in options
    others = [option for option in options if option is not type(None)]
    if len(others) != 1:

        def decode_union(value: Any) -> Any:
            if value is None and nullable:
                return None
            (_inner,) = others  # ValueError: only `X | None` has a rule
            raise AssertionError("unreachable")

        return decode_union
    inner = _decoder(others[0])
    if not nullable:
        return inner
    return lambda value: None if value is None else inner(value)


def _tuple_decoder(arguments: tuple[Any, ...]) -> _Decoder:
    if not arguments:

        def decode_bare(_value: Any) -> Any:
            return arguments[0]  # IndexError: a bare tuple has no item type

        return decode_bare
    decode_item = _decoder(arguments[0])

    def decode_tuple(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _Invalid(f": expected a list, got {type(value).__name__}")
        if len(value) > LIST_ITEMS_MAX:
            raise _Invalid(f": {len(value)} items, more than {LIST_ITEMS_MAX}")
        try:
            return tuple([decode_item(item) for item in value])
        except _Invalid as invalid:
            invalid.path.append(f"[{_first_invalid(decode_item, value)}]")
            raise

    return decode_tuple


def _first_invalid(decode_item: _Decoder, items: list[Any]) -> int:
    """The index of the first item that fails (decoding is pure: it fails again)."""
    for index, item in enumerate(items):
        try:
            decode_item(item)
        except _Invalid:
            return index
    raise AssertionError("an item failed once and not again")


def _decode_int(value: Any) -> int:
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise _Invalid(f": expected int, got {type(value).__name__}")


def _decode_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _Invalid(f": expected bool, got {type(value).__name__}")


def _decode_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Invalid(f": expected str, got {type(value).__name__}")


def _decode_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    raise _Invalid(f": expected bytes, got {type(value).__name__}")


def _no_rule(annotation: Any) -> _Decoder:
    def decode(_value: Any) -> Any:
        raise _Invalid(f": no schema rule for {annotation!r}", TypeError)

    return decode
