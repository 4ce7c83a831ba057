"""The settings pykraft knows, per resource type, and how each value is checked."""

from __future__ import annotations

from collections.abc import Callable

TOPIC = "topic"
BROKER = "broker"


def _integer(low: int) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        try:
            number = int(value)
        except ValueError:
            return f"{value!r} is not an integer"
        return None if number >= low else f"{number} is below the minimum {low}"

    return check


def _boolean(value: str) -> str | None:
    return None if value in ("true", "false") else f"{value!r} is not true or false"


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"{value!r} is not one of {', '.join(choices)}"

    return check


TOPIC_CONFIGS: dict[str, Callable[[str], str | None]] = {
    "cleanup.policy": _one_of("delete"),
    "retention.ms": _integer(-1),
    "retention.bytes": _integer(-1),
    "segment.bytes": _integer(14),
    "segment.ms": _integer(1),
    "max.message.bytes": _integer(0),
    "min.insync.replicas": _integer(1),
    "unclean.leader.election.enable": _boolean,
    "message.timestamp.type": _one_of("CreateTime", "LogAppendTime"),
    "compression.type": _one_of("producer", "none", "gzip", "snappy", "lz4", "zstd"),
    "flush.messages": _integer(1),
    "flush.ms": _integer(1),
}
BROKER_CONFIGS: dict[str, Callable[[str], str | None]] = {
    "log.retention.check.interval.ms": _integer(1),
    "replica.lag.time.max.ms": _integer(1),
}


def check_config(resource_type: str, name: str, value: str | None) -> str | None:
    """Why `name=value` is not a valid setting for the resource type, or None."""
    known = TOPIC_CONFIGS if resource_type == TOPIC else BROKER_CONFIGS
    check = known.get(name)
    if check is None:
        return f"unknown {resource_type} config {name!r}"
    return None if value is None else check(value)
