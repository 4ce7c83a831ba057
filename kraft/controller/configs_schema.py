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


def _ratio(value: str) -> str | None:
    try:
        number = float(value)
    except ValueError:
        return f"{value!r} is not a number"
    return None if 0.0 <= number <= 1.0 else f"{number} is not within [0, 1]"


CLEANUP_POLICIES = ("compact", "delete")


def cleanup_policies(value: str) -> frozenset[str]:
    """Kafka's list syntax: `compact,delete`, `delete, compact`, `delete`."""
    return frozenset(item.strip() for item in value.split(",") if item.strip())


def _cleanup_policy(value: str) -> str | None:
    policies = cleanup_policies(value)
    if not policies:
        return "cleanup.policy names no policy"
    unknown = sorted(policies - set(CLEANUP_POLICIES))
    if unknown:
        return f"{', '.join(map(repr, unknown))}: not one of {', '.join(CLEANUP_POLICIES)}"
    return None


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"{value!r} is not one of {', '.join(choices)}"

    return check


TOPIC_CONFIGS: dict[str, Callable[[str], str | None]] = {
    "cleanup.policy": _cleanup_policy,
    "delete.retention.ms": _integer(0),
    "min.cleanable.dirty.ratio": _ratio,
    "min.compaction.lag.ms": _integer(0),
    "max.compaction.lag.ms": _integer(1),
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


# Kafka's defaults (its broker-level log.* settings), what DescribeConfigs shows for a
# setting no one set; and each one's type as Kafka's ConfigType numbers it.
LONG_MAX = str(2**63 - 1)
TOPIC_DEFAULTS: dict[str, tuple[str, str]] = {
    "cleanup.policy": ("delete", "list"),
    "delete.retention.ms": ("86400000", "long"),
    "min.cleanable.dirty.ratio": ("0.5", "double"),
    "min.compaction.lag.ms": ("0", "long"),
    "max.compaction.lag.ms": (LONG_MAX, "long"),
    "retention.ms": ("604800000", "long"),
    "retention.bytes": ("-1", "long"),
    "segment.bytes": ("1073741824", "int"),
    "segment.ms": ("604800000", "long"),
    "max.message.bytes": ("1048588", "int"),
    "min.insync.replicas": ("1", "int"),
    "unclean.leader.election.enable": ("false", "boolean"),
    "message.timestamp.type": ("CreateTime", "string"),
    "compression.type": ("producer", "string"),
    "flush.messages": (LONG_MAX, "long"),
    "flush.ms": (LONG_MAX, "long"),
}
BROKER_DEFAULTS: dict[str, tuple[str, str]] = {
    "log.retention.check.interval.ms": ("300000", "long"),
    "replica.lag.time.max.ms": ("30000", "long"),
}
CONFIG_TYPES = {
    "boolean": 1,
    "string": 2,
    "int": 3,
    "short": 4,
    "long": 5,
    "double": 6,
    "list": 7,
}


def described(
    resource_type: str, settings: dict[str, str], names: tuple[str, ...] | None = None
) -> list[tuple[str, str, bool, str]]:
    """(name, value, set explicitly?, type) of each setting of a resource, defaults
    filled in; only `names` when given (unknown ones left out, as Kafka does)."""
    defaults = TOPIC_DEFAULTS if resource_type == TOPIC else BROKER_DEFAULTS
    wanted = sorted(defaults) if names is None else [n for n in names if n in defaults]
    return [
        (name, settings.get(name, defaults[name][0]), name in settings, defaults[name][1])
        for name in wanted
    ]


def check_config(resource_type: str, name: str, value: str | None) -> str | None:
    """Why `name=value` is not a valid setting for the resource type, or None."""
    known = TOPIC_CONFIGS if resource_type == TOPIC else BROKER_CONFIGS
    check = known.get(name)
    if check is None:
        return f"unknown {resource_type} config {name!r}"
    return None if value is None else check(value)
