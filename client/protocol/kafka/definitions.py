"""Kafka's message definitions, read from the JSON files an installed wheel carries.

Apache Kafka describes every message in `clients/src/main/resources/common/message/
*.json` (fields, types, the versions each field exists in, nullable, flexible and
tagged versions, defaults). The kafka-python wheel ships those files unchanged under
`kafka/protocol/schemas/resources/` (decision 0010); this module finds that directory
without importing the `kafka` package (importing it would pull in its whole client)
and turns each file into frozen specs the compiler works from. Nothing here is copied
from the definitions: they are read at import time from the installed distribution.

The JSON dialect: `//` comment lines, version ranges written "3", "3-7", "3+" or
"none", field names in CamelCase (turned into snake_case here, as Python names), and
struct types either nested in place (`"fields": [...]`) or named in `commonStructs`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import keyword
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import attrs

# Where the definitions live inside the kafka-python distribution.
DISTRIBUTION = "kafka-python"
RESOURCES_PARTS = ("protocol", "schemas", "resources")
# A version range open to the right ("3+") ends here: an int16 on the wire.
VERSION_MAX = 0x7FFF

PRIMITIVE_TYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "float64",
        "string",
        "bytes",
        "records",
        "uuid",
    }
)

_COMMENT_LINE = re.compile(r"(?m)^\s*//.*$")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class DefinitionError(Exception):
    """The installed definitions are missing or say something this codec cannot read."""


@attrs.frozen
class Versions:
    """An inclusive range of versions; `low > high` is the empty range ("none")."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> Versions:
        text = text.strip()
        if text == "none":
            return NO_VERSIONS
        if text.endswith("+"):
            return cls(int(text[:-1]), VERSION_MAX)
        if "-" in text:
            low, high = text.split("-", 1)
            return cls(int(low), int(high))
        return cls(int(text), int(text))

    def __contains__(self, version: object) -> bool:
        return isinstance(version, int) and self.low <= version <= self.high

    def intersect(self, other: Versions) -> Versions:
        return Versions(max(self.low, other.low), min(self.high, other.high))

    @property
    def empty(self) -> bool:
        return self.low > self.high


NO_VERSIONS = Versions(1, 0)


@attrs.frozen(kw_only=True)
class FieldSpec:
    json_name: str
    name: str  # snake_case, a Python identifier
    type: str  # as written: "int32", "[]int32", "TopicData", "[]TopicData"
    versions: Versions
    nullable_versions: Versions
    tagged_versions: Versions
    tag: int | None
    ignorable: bool
    default: str | None  # as written, parsed by the compiler for the field's type
    # A field may be encoded as if the message were not flexible (RequestHeader's
    # ClientId: old brokers must read any ApiVersions header).
    flexible_versions: Versions | None
    struct: StructSpec | None  # for struct and struct-array types

    @property
    def is_array(self) -> bool:
        return self.type.startswith("[]")

    @property
    def element_type(self) -> str:
        return self.type[2:] if self.is_array else self.type


@attrs.frozen(kw_only=True)
class StructSpec:
    name: str  # CamelCase, as in the definition
    fields: tuple[FieldSpec, ...]


@attrs.frozen(kw_only=True)
class MessageSpec:
    name: str  # "ProduceRequest", "RequestHeader"
    kind: str  # "request", "response" or "header"
    api_key: int | None
    valid_versions: Versions
    flexible_versions: Versions
    latest_version_unstable: bool
    listeners: tuple[str, ...]
    struct: StructSpec


def snake_case(name: str) -> str:
    snake = _CAMEL_BOUNDARY.sub("_", name).lower()
    return snake + "_" if keyword.iskeyword(snake) else snake


def resources_directory() -> pathlib.Path:
    """The directory of Kafka's JSON definitions inside the installed kafka-python."""
    spec = importlib.util.find_spec("kafka")
    if spec is None or not spec.submodule_search_locations:
        raise DefinitionError(
            f"Kafka's message definitions come from the {DISTRIBUTION} distribution, "
            "which is not installed (pip install kafka-python)"
        )
    for location in spec.submodule_search_locations:
        directory = pathlib.Path(location).joinpath(*RESOURCES_PARTS)
        if directory.is_dir():
            return directory
    raise DefinitionError(f"no {'/'.join(RESOURCES_PARTS)} directory in the kafka package")


def distribution_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def load_all(directory: pathlib.Path | None = None) -> dict[str, MessageSpec]:
    """Every message definition in the directory, by name ("ProduceRequest")."""
    directory = directory or resources_directory()
    specs: dict[str, MessageSpec] = {}
    for path in sorted(directory.glob("*.json")):
        document = json.loads(_COMMENT_LINE.sub("", path.read_text(encoding="utf-8")))
        if document.get("type") not in ("request", "response", "header"):
            continue  # data formats (consumer protocol assignment ...), not messages
        spec = _message(document)
        specs[spec.name] = spec
    if not specs:
        raise DefinitionError(f"no message definitions in {directory}")
    return specs


def _message(document: Mapping[str, Any]) -> MessageSpec:
    common = {s["name"]: s for s in document.get("commonStructs", ())}
    name = document["name"]
    return MessageSpec(
        name=name,
        kind=document["type"],
        api_key=document.get("apiKey"),
        valid_versions=Versions.parse(document["validVersions"]),
        flexible_versions=Versions.parse(document["flexibleVersions"]),
        latest_version_unstable=bool(document.get("latestVersionUnstable", False)),
        listeners=tuple(document.get("listeners", ())),
        struct=_struct(name, document["fields"], common),
    )


def _struct(
    name: str, fields: list[Mapping[str, Any]], common: Mapping[str, Mapping[str, Any]]
) -> StructSpec:
    specs = tuple(_field(field, common) for field in fields)
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise DefinitionError(f"{name}: two fields share a Python name: {names}")
    return StructSpec(name=name, fields=specs)


def _field(field: Mapping[str, Any], common: Mapping[str, Mapping[str, Any]]) -> FieldSpec:
    type_name: str = field["type"]
    element = type_name[2:] if type_name.startswith("[]") else type_name
    struct: StructSpec | None = None
    if element not in PRIMITIVE_TYPES:
        if "fields" in field:
            struct = _struct(element, field["fields"], common)
        elif element in common:
            struct = _struct(element, common[element]["fields"], common)
        else:
            raise DefinitionError(f"field {field['name']}: unknown type {type_name!r}")
    tagged = Versions.parse(field.get("taggedVersions", "none"))
    if not tagged.empty and "tag" not in field:
        raise DefinitionError(f"field {field['name']}: tagged versions without a tag")
    default = field.get("default")
    flexible = field.get("flexibleVersions")
    return FieldSpec(
        json_name=field["name"],
        name=snake_case(field["name"]),
        type=type_name,
        versions=Versions.parse(field["versions"]),
        nullable_versions=Versions.parse(field.get("nullableVersions", "none")),
        tagged_versions=tagged,
        tag=field.get("tag"),
        ignorable=bool(field.get("ignorable", False)),
        default=None if default is None else str(default),
        flexible_versions=None if flexible is None else Versions.parse(flexible),
        struct=struct,
    )
