"""Hypothesis strategies for any message at any version, built from the same definitions.

A generated message sets every field the version has (with values of the field's wire
type) and leaves the others at their defaults, so it is exactly what the codec must
carry through encode and decode unchanged.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from client.protocol.kafka.compiler import MessageCodec
from client.protocol.kafka.definitions import FieldSpec, StructSpec

_INTS = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
}
ARRAY_ITEMS_MAX = 3


def _scalar(kind: str) -> st.SearchStrategy[Any]:
    if kind in _INTS:
        low, high = _INTS[kind]
        return st.integers(low, high)
    if kind == "bool":
        return st.booleans()
    if kind == "float64":
        return st.floats(allow_nan=False)
    if kind == "string":
        return st.text(max_size=12)
    if kind in ("bytes", "records"):
        return st.binary(max_size=24)
    if kind == "uuid":
        return st.uuids()
    raise AssertionError(kind)


def message(codec: MessageCodec, version: int) -> st.SearchStrategy[Any]:
    return _struct(codec, codec.spec.struct, version)


def _struct(codec: MessageCodec, spec: StructSpec, version: int) -> st.SearchStrategy[Any]:
    cls = codec.classes[spec.name]
    fields = {
        field.name: _field(codec, field, version)
        for field in spec.fields
        if version in field.versions
    }
    return st.builds(cls, **fields)


def _field(codec: MessageCodec, field: FieldSpec, version: int) -> st.SearchStrategy[Any]:
    if field.struct is not None:
        element: st.SearchStrategy[Any] = _struct(codec, field.struct, version)
    else:
        element = _scalar(field.element_type)
    if field.is_array:
        value: st.SearchStrategy[Any] = st.lists(element, max_size=ARRAY_ITEMS_MAX).map(tuple)
    else:
        value = element
    if version in field.nullable_versions:
        return st.one_of(st.none(), value)
    return value


def plain(codec: MessageCodec, spec: StructSpec, version: int, value: Any) -> Any:
    """A message as nested dicts of the fields its version has (to compare codecs)."""
    if value is None:
        return None
    out: dict[str, Any] = {}
    for field in spec.fields:
        if version not in field.versions:
            continue
        item = getattr(value, field.name)
        if field.struct is not None and field.is_array:
            out[field.name] = (
                None if item is None else [plain(codec, field.struct, version, i) for i in item]
            )
        elif field.struct is not None:
            out[field.name] = plain(codec, field.struct, version, item)
        elif field.is_array:
            out[field.name] = None if item is None else list(item)
        else:
            out[field.name] = item
    return out
