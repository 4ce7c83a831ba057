"""Message classes and per-version codecs generated from the definitions.

For each message, one frozen attrs class per struct holds the union of the fields of
every version (as Kafka's own `*Data` classes do); a field the version lacks keeps its
default. For each (message, version) the compiler writes the Python source of one
decoder and one encoder per struct, with that version's layout unrolled (consecutive
fixed-width fields read and written by one `struct.Struct`), and `exec`s it once, on
first use. The generated code calls only the readers and writers of `wire.py`, so
every length is checked before it is used.

Encoding follows Kafka's generated `write()`: a field the version lacks must hold its
default unless the definition marks it ignorable (else KafkaEncodeError, Kafka's
UnsupportedVersionException); a tagged field is written only when it differs from its
default, in ascending tag order. Decoding skips tagged fields it does not know (Kafka
keeps them as unknown tagged fields; pykraft has no use for them yet).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from typing import Any

import attrs

from client.protocol.kafka import wire
from client.protocol.kafka.definitions import FieldSpec, MessageSpec, StructSpec, Versions
from client.protocol.kafka.errors import KafkaCodecError, KafkaEncodeError

Decoder = Callable[[memoryview, int], tuple[Any, int]]
Encoder = Callable[[Any, bytearray], None]

# struct codes of the fixed-width types; bool is "?" (any non-zero byte reads as true,
# as Kafka's readByte() != 0).
_FIXED = {
    "bool": ("?", 1),
    "int8": ("b", 1),
    "int16": ("h", 2),
    "uint16": ("H", 2),
    "int32": ("i", 4),
    "uint32": ("I", 4),
    "int64": ("q", 8),
    "float64": ("d", 8),
}
_ZERO_UUID = uuid.UUID(int=0)


@attrs.frozen
class Layout:
    """One field as it is encoded at one version."""

    field: FieldSpec
    nullable: bool
    compact: bool  # flexible encoding for this field (KIP-482)


class MessageCodec:
    """The classes and the per-version codecs of one message."""

    def __init__(self, spec: MessageSpec) -> None:
        self.spec = spec
        self.classes: dict[str, type] = {}
        self.defaults: dict[tuple[str, str], Any] = {}
        self.root = self._build_class(spec.struct)
        self._decoders: dict[int, Decoder] = {}
        self._encoders: dict[int, Encoder] = {}

    # ------------------------------------------------------------------ classes

    def _build_class(self, struct_spec: StructSpec) -> type:
        known = self.classes.get(struct_spec.name)
        if known is not None:
            return known
        attributes: dict[str, Any] = {}
        for field in struct_spec.fields:
            if field.struct is not None:
                self._build_class(field.struct)
            default = self._default(field)
            self.defaults[(struct_spec.name, field.name)] = default
            attributes[field.name] = attrs.field(default=default)
        cls = attrs.make_class(
            struct_spec.name, attributes, frozen=True, slots=True, kw_only=True, repr_ns=None
        )
        cls.__module__ = "client.protocol.kafka.messages"
        cls.__qualname__ = (
            struct_spec.name
            if struct_spec is self.spec.struct
            else f"{self.spec.name}.{struct_spec.name}"
        )
        self.classes[struct_spec.name] = cls
        return cls

    def _default(self, field: FieldSpec) -> Any:
        text = field.default
        if field.is_array:
            return None if text == "null" else ()
        if field.struct is not None:
            return None if text == "null" else self.classes[field.struct.name]()
        kind = field.type
        if kind == "bool":
            return text is not None and text.lower() == "true"
        if kind in ("int8", "int16", "uint16", "int32", "uint32", "int64"):
            return 0 if text is None else int(text, 0)
        if kind == "float64":
            return 0.0 if text is None else float(text)
        if kind == "string":
            return None if text == "null" else (text or "")
        if kind in ("bytes", "records"):
            return None if text == "null" or kind == "records" else b""
        if kind == "uuid":
            return _ZERO_UUID
        raise AssertionError(f"no default rule for {kind}")

    # ------------------------------------------------------------------ codecs

    def decoder(self, version: int) -> Decoder:
        decoder = self._decoders.get(version)
        if decoder is None:
            self._compile(version)
            decoder = self._decoders[version]
        return decoder

    def encoder(self, version: int) -> Encoder:
        encoder = self._encoders.get(version)
        if encoder is None:
            self._compile(version)
            encoder = self._encoders[version]
        return encoder

    def _compile(self, version: int) -> None:
        assert version in self.spec.valid_versions, (self.spec.name, version)
        flexible = version in self.spec.flexible_versions
        generator = _Generator(self, version, flexible)
        generator.struct(self.spec.struct)
        namespace = generator.namespace
        source = "\n".join(generator.lines)
        exec(compile(source, f"<kafka codec {self.spec.name} v{version}>", "exec"), namespace)
        root = self.spec.struct.name
        self._decoders[version] = namespace[f"decode_{root}"]
        self._encoders[version] = namespace[f"encode_{root}"]

    def source(self, version: int) -> str:
        """The generated source of one version (for reading and debugging)."""
        generator = _Generator(self, version, version in self.spec.flexible_versions)
        generator.struct(self.spec.struct)
        return "\n".join(generator.lines)


class _Generator:
    def __init__(self, codec: MessageCodec, version: int, flexible: bool) -> None:
        self.codec = codec
        self.version = version
        self.flexible = flexible
        self.lines: list[str] = []
        self.done: set[str] = set()
        self.namespace: dict[str, Any] = {
            "wire": wire,
            "KafkaCodecError": KafkaCodecError,
            "KafkaEncodeError": KafkaEncodeError,
            "_new": object.__new__,
        }
        self._constants = 0

    def constant(self, value: Any, hint: str) -> str:
        self._constants += 1
        name = f"_{hint}_{self._constants}"
        self.namespace[name] = value
        return name

    def layouts(
        self, struct_spec: StructSpec
    ) -> tuple[list[Layout], list[Layout], list[FieldSpec]]:
        """(regular fields, tagged fields by tag, fields absent) at this version."""
        regular, tagged, absent = [], [], []
        for field in struct_spec.fields:
            if self.version not in field.versions:
                absent.append(field)
                continue
            compact = self.flexible and (
                field.flexible_versions is None or self.version in field.flexible_versions
            )
            layout = Layout(field, self.version in field.nullable_versions, compact)
            if self.version in field.tagged_versions:
                if not self.flexible:
                    raise AssertionError(f"{field.name}: tagged in a non-flexible version")
                tagged.append(layout)
            else:
                regular.append(layout)
        tagged.sort(key=lambda layout: layout.field.tag or 0)
        return regular, tagged, absent

    # ------------------------------------------------------------------ one struct

    def struct(self, struct_spec: StructSpec) -> None:
        if struct_spec.name in self.done:
            return
        self.done.add(struct_spec.name)
        for field in struct_spec.fields:
            if field.struct is not None and self.version in field.versions:
                self.struct(field.struct)
        regular, tagged, absent = self.layouts(struct_spec)
        self._decoder(struct_spec, regular, tagged)
        self._encoder(struct_spec, regular, tagged, absent)

    def _decoder(
        self, struct_spec: StructSpec, regular: list[Layout], tagged: list[Layout]
    ) -> None:
        lines = [f"def decode_{struct_spec.name}(buf, pos):"]
        for group in _groups(regular):
            if isinstance(group, list):
                codes = "".join(_FIXED[layout.field.type][0] for layout in group)
                packer = self.constant(struct.Struct(">" + codes), "fixed")
                names = "".join(f"f_{layout.field.name}, " for layout in group)
                lines.append(f"    {names}= {packer}.unpack_from(buf, pos)")
                lines.append(f"    pos += {struct.calcsize('>' + codes)}")
            else:
                lines.extend(self._read(group, "    "))
        if self.flexible:
            for layout in tagged:
                default = self.constant(
                    self.codec.defaults[(struct_spec.name, layout.field.name)], "d"
                )
                lines.append(f"    f_{layout.field.name} = {default}")
            # Almost every struct carries no tagged field: one byte, 0.
            lines.append("    if buf[pos] == 0:")
            lines.append("        pos += 1")
            lines.append("    else:")
            lines.append("        count, pos = wire.read_uvarint(buf, pos)")
            lines.append("        if count > len(buf) - pos:")
            lines.append(
                "            raise KafkaCodecError(f'{count} tagged fields at byte {pos}')"
            )
            lines.append("        for _ in range(count):")
            lines.append("            tag, start, end = wire.skip_tagged_field(buf, pos)")
            for layout in tagged:
                lines.append(f"            if tag == {layout.field.tag}:")
                lines.append("                whole = buf; buf = buf[:end]; pos = start")
                lines.extend(self._read(layout, "                "))
                lines.append("                buf = whole")
                lines.append(
                    f"                wire.check_consumed(pos, end, 'tag {layout.field.tag}')"
                )
            lines.append("            pos = end")
        lines.extend(self._construct(struct_spec, regular + tagged))
        self.lines.extend(lines)
        self.lines.append("")

    def _construct(self, struct_spec: StructSpec, present: list[Layout]) -> list[str]:
        # The class is frozen: its __init__ goes through a checked setattr per field.
        # The decoder fills the slots through their descriptors instead (about half the
        # cost); every slot is set, the fields this version lacks to their defaults.
        cls = self.codec.classes[struct_spec.name]
        lines = [f"    o = _new({self.constant(cls, 'cls')})"]
        decoded = {layout.field.name for layout in present}
        for field in struct_spec.fields:
            setter = self.constant(getattr(cls, field.name).__set__, "set")
            if field.name in decoded:
                lines.append(f"    {setter}(o, f_{field.name})")
            else:
                default = self.constant(self.codec.defaults[(struct_spec.name, field.name)], "d")
                lines.append(f"    {setter}(o, {default})")
        lines.append("    return o, pos")
        return lines

    def _read(self, layout: Layout, indent: str) -> list[str]:
        field = layout.field
        target = f"f_{field.name}"
        if field.is_array:
            return self._read_array(layout, indent)
        if field.struct is not None:
            call = f"decode_{field.struct.name}(buf, pos)"
            if layout.nullable:
                # KIP-893: a nullable struct is preceded by an int8, -1 for null.
                return [
                    f"{indent}if wire.INT8.unpack_from(buf, pos)[0] < 0:",
                    f"{indent}    {target} = None; pos += 1",
                    f"{indent}else:",
                    f"{indent}    {target}, pos = decode_{field.struct.name}(buf, pos + 1)",
                ]
            return [f"{indent}{target}, pos = {call}"]
        if field.type in _FIXED:
            code, size = _FIXED[field.type]
            packer = self.constant(struct.Struct(">" + code), "fixed")
            return [f"{indent}{target}, = {packer}.unpack_from(buf, pos); pos += {size}"]
        return [f"{indent}{target}, pos = wire.{_reader(layout)}(buf, pos)"]

    def _read_array(self, layout: Layout, indent: str) -> list[str]:
        field = layout.field
        target = f"f_{field.name}"
        length = "read_compact_array_length" if layout.compact else "read_array_length"
        element = field.element_type
        element_layout = Layout(field, False, layout.compact)
        if element in _FIXED:
            code, size = _FIXED[element]
            lines = [
                f"{indent}count, pos = wire.{length}(buf, pos, {size}, {layout.nullable})",
                f"{indent}if count < 0:",
                f"{indent}    {target} = None",
                f"{indent}else:",
                f"{indent}    {target}, pos = wire.read_fixed_array(buf, pos, count, {code!r}, {size})",
            ]
            return lines
        if field.struct is not None:
            item = f"decode_{field.struct.name}(buf, pos)"
        else:
            item = f"wire.{_reader(Layout(_element_spec(field), False, element_layout.compact))}(buf, pos)"
        return [
            f"{indent}count, pos = wire.{length}(buf, pos, 1, {layout.nullable})",
            f"{indent}if count < 0:",
            f"{indent}    {target} = None",
            f"{indent}else:",
            f"{indent}    items = []",
            f"{indent}    for _ in range(count):",
            f"{indent}        item, pos = {item}",
            f"{indent}        items.append(item)",
            f"{indent}    {target} = tuple(items)",
        ]

    # ------------------------------------------------------------------ encoders

    def _encoder(
        self,
        struct_spec: StructSpec,
        regular: list[Layout],
        tagged: list[Layout],
        absent: list[FieldSpec],
    ) -> None:
        where = f"{self.codec.spec.name} v{self.version}"
        lines = [f"def encode_{struct_spec.name}(o, out):"]
        for field in absent:
            if field.ignorable:
                continue
            default = self.constant(self.codec.defaults[(struct_spec.name, field.name)], "d")
            message = f"{where}: {struct_spec.name}.{field.name} is not in this version"
            lines.append(f"    if o.{field.name} != {default}:")
            lines.append(f"        raise KafkaEncodeError({message!r})")
        for group in _groups(regular):
            if isinstance(group, list):
                codes = "".join(_FIXED[layout.field.type][0] for layout in group)
                packer = self.constant(struct.Struct(">" + codes), "fixed")
                values = ", ".join(f"o.{layout.field.name}" for layout in group)
                lines.append(f"    out += {packer}.pack({values})")
            else:
                lines.extend(self._write(struct_spec, group, f"o.{group.field.name}", "    "))
        if self.flexible:
            if not tagged:
                lines.append("    out += b'\\x00'")
            else:
                lines.append("    tags = []")
                for layout in tagged:
                    default = self.constant(
                        self.codec.defaults[(struct_spec.name, layout.field.name)], "d"
                    )
                    lines.append(f"    if o.{layout.field.name} != {default}:")
                    lines.append("        whole = out; out = bytearray()")
                    lines.extend(
                        self._write(struct_spec, layout, f"o.{layout.field.name}", "        ")
                    )
                    lines.append(f"        tags.append(({layout.field.tag}, out)); out = whole")
                lines.append("    out += wire.uvarint(len(tags))")
                lines.append("    for tag, data in tags:")
                lines.append("        out += wire.uvarint(tag); out += wire.uvarint(len(data))")
                lines.append("        out += data")
        if len(lines) == 1:
            lines.append("    pass")
        self.lines.extend(lines)
        self.lines.append("")

    def _write(self, struct_spec: StructSpec, layout: Layout, value: str, indent: str) -> list[str]:
        field = layout.field
        where = f"{self.codec.spec.name} v{self.version} {struct_spec.name}.{field.name}"
        if field.is_array:
            lines = [
                f"{indent}v = {value}",
                f"{indent}wire.write_array_length(out, v, {layout.nullable}, {layout.compact}, {where!r})",
                f"{indent}if v is not None:",
            ]
            element = field.element_type
            if element in _FIXED:
                lines.append(f"{indent}    wire.write_fixed_array(out, v, {_FIXED[element][0]!r})")
            elif field.struct is not None:
                lines.append(f"{indent}    for item in v:")
                lines.append(f"{indent}        encode_{field.struct.name}(item, out)")
            else:
                element_layout = Layout(_element_spec(field), False, layout.compact)
                lines.append(f"{indent}    for item in v:")
                lines.extend(self._write(struct_spec, element_layout, "item", indent + "        "))
            return lines
        if field.struct is not None:
            if layout.nullable:
                return [
                    f"{indent}if {value} is None:",
                    f"{indent}    out += b'\\xff'",
                    f"{indent}else:",
                    f"{indent}    out += b'\\x01'",
                    f"{indent}    encode_{field.struct.name}({value}, out)",
                ]
            return [
                f"{indent}if {value} is None:",
                f"{indent}    raise KafkaEncodeError({where + ': null struct in a version where it is not nullable'!r})",
                f"{indent}encode_{field.struct.name}({value}, out)",
            ]
        if field.type in _FIXED:
            packer = self.constant(struct.Struct(">" + _FIXED[field.type][0]), "fixed")
            return [f"{indent}out += {packer}.pack({value})"]
        if field.type == "uuid":
            return [f"{indent}wire.write_uuid(out, {value}, {where!r})"]
        kind = "string" if field.type == "string" else "bytes"
        writer = f"write_compact_{kind}" if layout.compact else f"write_{kind}"
        return [f"{indent}wire.{writer}(out, {value}, {layout.nullable}, {where!r})"]


def _groups(layouts: list[Layout]) -> list[list[Layout] | Layout]:
    """Consecutive fixed-width scalar fields grouped, so one Struct reads them all."""
    groups: list[list[Layout] | Layout] = []
    for layout in layouts:
        fixed = layout.field.type in _FIXED
        if fixed and groups and isinstance(groups[-1], list):
            groups[-1].append(layout)
        elif fixed:
            groups.append([layout])
        else:
            groups.append(layout)
    return groups


def _element_spec(field: FieldSpec) -> FieldSpec:
    return attrs.evolve(field, type=field.element_type, nullable_versions=Versions(1, 0))


def _reader(layout: Layout) -> str:
    kind = layout.field.type
    if kind == "uuid":
        return "read_uuid"
    base = "string" if kind == "string" else "bytes"  # bytes and records
    prefix = "compact_" if layout.compact else ""
    nullable = "nullable_" if layout.nullable else ""
    return f"read_{prefix}{nullable}{base}"
