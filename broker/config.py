"""A node's configuration: a TOML file, Kafka's setting names in snake_case.

```toml
node_id = 1
roles = ["controller", "broker"]
data_dir = "/var/lib/pykraft/node-1"
listeners = "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:19091"
controller_quorum_voters = "1@127.0.0.1:19091,2@127.0.0.1:19092,3@127.0.0.1:19093"
```

Anything unknown or mistyped stops the server before it touches its data directory.
"""

from __future__ import annotations

import tomllib
from typing import Any

import attrs

from broker.listeners import (
    BROKER_LISTENER,
    CONTROLLER_LISTENER,
    LISTENER_NAMES,
    REPLICATION_LISTENER,
)
from broker.replica_manager import RETENTION_CHECK_INTERVAL_MS
from broker.replica_state import REPLICA_LAG_TIME_MAX_MS
from kraft.controller.cluster import BROKER_HEARTBEAT_INTERVAL_MS, BROKER_SESSION_TIMEOUT_MS
from kraft.metadata.loader import SNAPSHOT_MIN_BYTES
from kraft.raft.core import RaftConfig

CONTROLLER = "controller"
BROKER = "broker"

_RAFT_DEFAULTS = RaftConfig(local_id=0, voters=frozenset({0}), cluster_id="")


class ConfigError(ValueError):
    pass


@attrs.frozen(kw_only=True)
class NodeConfig:
    node_id: int
    roles: tuple[str, ...]
    data_dir: str
    controller_quorum_voters: dict[int, tuple[str, int]]
    listeners: dict[str, tuple[str, int]]
    rack: str | None = None
    # Where this node reaches other brokers, when not at their registered listener
    # (the fault lab routes every link through a proxy of its own).
    broker_address_overrides: dict[int, tuple[str, int]] = attrs.field(factory=dict)
    broker_session_timeout_ms: int = BROKER_SESSION_TIMEOUT_MS
    broker_heartbeat_interval_ms: int = BROKER_HEARTBEAT_INTERVAL_MS
    election_timeout_ms: int = _RAFT_DEFAULTS.election_timeout_ms
    fetch_timeout_ms: int = _RAFT_DEFAULTS.fetch_timeout_ms
    request_timeout_ms: int = _RAFT_DEFAULTS.request_timeout_ms
    metadata_snapshot_min_bytes: int = SNAPSHOT_MIN_BYTES
    replica_lag_time_max_ms: int = REPLICA_LAG_TIME_MAX_MS
    log_retention_check_interval_ms: int = RETENTION_CHECK_INTERVAL_MS
    # KIP-966 (eligible leader replicas, unclean-shutdown detection); a controller
    # setting, written into the metadata as a feature level when it becomes active.
    eligible_leader_replicas_enable: bool = True
    offsets_topic_num_partitions: int = 50  # Kafka's offsets.topic.num.partitions
    # Kafka's transaction.state.log.num.partitions; like the one above, fixed once the
    # topic exists (a coordinator is found by hash(id) % partitions).
    transaction_state_num_partitions: int = 50
    offsets_retention_minutes: int = 10_080  # offsets.retention.minutes (7 days)
    offsets_topic_segment_bytes: int = 104_857_600  # offsets.topic.segment.bytes
    offsets_retention_check_interval_ms: int = 600_000  # offsets.retention.check.interval.ms
    log_cleaner_enable: bool = True  # log.cleaner.enable
    log_cleaner_backoff_ms: int = 15_000  # log.cleaner.backoff.ms
    # How long a partition keeps an idle producer's state (Kafka's
    # producer.id.expiration.ms, KIP-854) and a transactional one's (decision 0014).
    producer_id_expiration_ms: int = 86_400_000
    transactional_id_expiration_ms: int = 604_800_000
    # The Kafka listener's largest request (Kafka's socket.request.max.bytes, 100 MiB),
    # refused before its body is read; and how long a Kafka connection with nothing
    # in flight may stay silent before it is closed (connections.max.idle.ms, 10 min).
    socket_request_max_bytes: int = 104_857_600
    connections_max_idle_ms: int = 600_000

    @property
    def is_controller(self) -> bool:
        return CONTROLLER in self.roles

    @property
    def is_broker(self) -> bool:
        return BROKER in self.roles

    def raft_config(self, cluster_id: str) -> RaftConfig:
        return RaftConfig(
            local_id=self.node_id,
            voters=frozenset(self.controller_quorum_voters),
            cluster_id=cluster_id,
            election_timeout_ms=self.election_timeout_ms,
            fetch_timeout_ms=self.fetch_timeout_ms,
            request_timeout_ms=self.request_timeout_ms,
        )

    def to_toml(self) -> str:
        def listener(name: str) -> str:
            host, port = self.listeners[name]
            return f"{name}://{host}:{port}"

        voters = ",".join(
            f"{node}@{host}:{port}"
            for node, (host, port) in sorted(self.controller_quorum_voters.items())
        )
        lines = [
            f"node_id = {self.node_id}",
            "roles = [" + ", ".join(f'"{role}"' for role in self.roles) + "]",
            f"data_dir = {_quote(self.data_dir)}",
            f'listeners = "{",".join(listener(name) for name in sorted(self.listeners))}"',
            f'controller_quorum_voters = "{voters}"',
        ]
        if self.rack is not None:
            lines.append(f"rack = {_quote(self.rack)}")
        if self.broker_address_overrides:
            overrides = ",".join(
                f"{node}@{host}:{port}"
                for node, (host, port) in sorted(self.broker_address_overrides.items())
            )
            lines.append(f'broker_address_overrides = "{overrides}"')
        for name in _INT_SETTINGS:
            lines.append(f"{name} = {getattr(self, name)}")
        for name in _BOOL_SETTINGS:
            lines.append(f"{name} = {str(getattr(self, name)).lower()}")
        return "\n".join(lines) + "\n"


_INT_SETTINGS = (
    "broker_session_timeout_ms",
    "broker_heartbeat_interval_ms",
    "election_timeout_ms",
    "fetch_timeout_ms",
    "request_timeout_ms",
    "metadata_snapshot_min_bytes",
    "replica_lag_time_max_ms",
    "log_retention_check_interval_ms",
    "offsets_topic_num_partitions",
    "transaction_state_num_partitions",
    "offsets_retention_minutes",
    "offsets_topic_segment_bytes",
    "offsets_retention_check_interval_ms",
    "log_cleaner_backoff_ms",
    "producer_id_expiration_ms",
    "transactional_id_expiration_ms",
    "socket_request_max_bytes",
    "connections_max_idle_ms",
)
_BOOL_SETTINGS = ("eligible_leader_replicas_enable", "log_cleaner_enable")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _address(text: str, where: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{where}: {text!r} is not host:port")
    return host, int(port)


def parse_voters(text: str) -> dict[int, tuple[str, int]]:
    voters: dict[int, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node, sep, address = item.partition("@")
        if not sep or not node.isdigit():
            raise ConfigError(f"controller_quorum_voters: {item!r} is not id@host:port")
        if int(node) in voters:
            raise ConfigError(f"controller_quorum_voters: node {node} is listed twice")
        voters[int(node)] = _address(address, "controller_quorum_voters")
    if not voters:
        raise ConfigError("controller_quorum_voters names no voter")
    return voters


def parse_listeners(text: str) -> dict[str, tuple[str, int]]:
    listeners: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.partition("://")
        if not sep or name not in LISTENER_NAMES:
            raise ConfigError(
                f"listeners: {item!r} is not NAME://host:port with NAME one of "
                f"{', '.join(LISTENER_NAMES)}"
            )
        listeners[name] = _address(address, "listeners")
    return listeners


def node_config_from(settings: dict[str, Any]) -> NodeConfig:
    settings = dict(settings)

    def take(name: str, kind: type, default: Any = attrs.NOTHING) -> Any:
        if name not in settings:
            if default is attrs.NOTHING:
                raise ConfigError(f"{name} is required")
            return default
        value = settings.pop(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{name} must be {kind.__name__}, got {value!r}")
        return value

    node_id = take("node_id", int)
    roles = take("roles", list)
    if not roles or any(role not in (CONTROLLER, BROKER) for role in roles):
        raise ConfigError(f"roles must be a non-empty list of controller/broker, got {roles!r}")
    data_dir = take("data_dir", str)
    voters = parse_voters(take("controller_quorum_voters", str))
    listeners = parse_listeners(take("listeners", str))
    rack = take("rack", str, None)
    overrides_text = take("broker_address_overrides", str, "")
    overrides = parse_voters(overrides_text) if overrides_text else {}
    numbers = {name: take(name, int, None) for name in _INT_SETTINGS}
    numbers.update({name: take(name, bool, None) for name in _BOOL_SETTINGS})
    if settings:
        raise ConfigError(f"unknown settings: {', '.join(sorted(settings))}")
    config = NodeConfig(
        node_id=node_id,
        roles=tuple(dict.fromkeys(roles)),
        data_dir=data_dir,
        controller_quorum_voters=voters,
        listeners=listeners,
        rack=rack,
        broker_address_overrides=overrides,
        **{name: value for name, value in numbers.items() if value is not None},
    )
    _check(config)
    return config


def _check(config: NodeConfig) -> None:
    if config.is_controller:
        if config.node_id not in config.controller_quorum_voters:
            raise ConfigError(f"controller {config.node_id} is not in controller_quorum_voters")
        if CONTROLLER_LISTENER not in config.listeners:
            raise ConfigError("a controller needs a CONTROLLER listener")
        if config.listeners[CONTROLLER_LISTENER] != config.controller_quorum_voters[config.node_id]:
            raise ConfigError("the CONTROLLER listener must be this node's voter address")
    elif config.node_id in config.controller_quorum_voters:
        raise ConfigError(f"broker-only node {config.node_id} is listed as a voter")
    if config.is_broker and BROKER_LISTENER not in config.listeners:
        raise ConfigError("a broker needs a PLAINTEXT listener")
    if config.is_broker and REPLICATION_LISTENER not in config.listeners:
        raise ConfigError(
            "a broker needs a REPLICATION listener (other brokers fetch its partitions there)"
        )
    if config.socket_request_max_bytes <= 0 or config.connections_max_idle_ms <= 0:
        raise ConfigError("socket_request_max_bytes and connections_max_idle_ms must be positive")
    if config.producer_id_expiration_ms <= 0 or config.transactional_id_expiration_ms <= 0:
        raise ConfigError(
            "producer_id_expiration_ms and transactional_id_expiration_ms must be positive"
        )
    if config.broker_heartbeat_interval_ms >= config.broker_session_timeout_ms:
        raise ConfigError("broker_heartbeat_interval_ms must be below broker_session_timeout_ms")


def load(path: str) -> NodeConfig:
    try:
        with open(path, "rb") as file:
            settings = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None
    return node_config_from(settings)
