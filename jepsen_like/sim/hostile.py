"""A hostile peer: well-framed requests with hostile values, sent to every listener of
a simulated cluster while its workload runs (issue 14).

Each request comes from a template (which API, on which listener) filled with values
at the edges of Kafka's types, ids of no member, offsets beyond any log, repeated
partitions and forged batch headers. Identities are never believable (a real voter's id
with a plausible epoch, a real broker's id with its epoch and an offset inside the
log): without authentication no protocol can tell those from the real peer, which is
why node-to-node RPCs are served on internal listeners only. Everything else must be
refused with an error code: the simulator's invariants (no node dies, one leader per
epoch, high-water marks never move back) and the workload's checkers (nothing
acknowledged lost) must hold, and every node must start again from what it wrote.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs

from client.protocol.apis import ApiKey
from client.protocol.errors import KafkaError
from kraft.raft import wire
from kraft.raft.messages import (
    BeginQuorumEpochRequest,
    EndQuorumEpochRequest,
    FetchSnapshotRequest,
    OffsetAndEpoch,
    VoteRequest,
)
from kraft.raft.messages import FetchRequest as RaftFetchRequest
from storage.records import RecordInput, build_batch, compute_crc

# Values at the edges of Kafka's int16/int32/int64 and around them.
EDGE_VALUES = (0, 1, -1, 2, 99, 2**15 - 1, 2**31 - 2, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63))
NOT_A_MEMBER = (99, -5, 2**31 - 1)
TEMPLATES = (
    "vote",
    "begin-quorum-epoch",
    "end-quorum-epoch",
    "raft-fetch",
    "fetch-snapshot",
    "replica-fetch",
    "consumer-fetch",
    "produce",
    "metadata",
    "create-topics",
    "alter-partition",
    "heartbeat",
    "delete-records",
    "list-offsets",
)


@attrs.frozen(kw_only=True)
class HostileRequest:
    template: str
    node: int  # an index into the cluster's nodes (taken modulo their number)
    values: tuple[int, ...]  # edge values the template fills in, in its order
    at_s: float  # when, in simulated seconds after the workload starts


def _pick(values: tuple[int, ...], index: int, choices: tuple[int, ...] = EDGE_VALUES) -> int:
    return values[index % len(values)] if values else choices[index % len(choices)]


def _member_not(values: tuple[int, ...], index: int) -> int:
    return NOT_A_MEMBER[_pick(values, index) % len(NOT_A_MEMBER)]


# Header fields a forged batch changes, each with values that can never be right for
# a batch of one record (a forged batch that happened to be valid would be a stranger's
# write in the workload's topic, not a hostile one).
FORGERIES = (
    (23, ">i", (2**31 - 1, -1, 5)),  # lastOffsetDelta
    (57, ">i", (0, -1, 1000, 2**31 - 1)),  # recordCount
    (21, ">h", (0x20, 7, 2, 3, 4)),  # attributes: control, unknown and unread codecs
)


def _forged_batch(values: tuple[int, ...]) -> bytes:
    batch = bytearray(build_batch([RecordInput(timestamp=1, value=b"hostile")]))
    position, fmt, wrong = FORGERIES[_pick(values, 5) % len(FORGERIES)]
    struct.pack_into(fmt, batch, position, wrong[_pick(values, 6) % len(wrong)])
    struct.pack_into(">I", batch, 17, compute_crc(batch))
    return bytes(batch)


def build(request: HostileRequest, *, cluster_id: str, topic: str) -> tuple[str, int, Any]:
    """(listener, api key, body) of one hostile request."""
    v = request.values
    kind = request.template
    if kind == "vote":
        body = wire.encode(
            VoteRequest(
                cluster_id=cluster_id,
                candidate_epoch=1,
                candidate_id=1,
                last_offset_epoch=0,
                last_offset=0,
            )
        )
        body[1], body[2], body[3], body[4] = (
            _pick(v, 0),
            _member_not(v, 1),
            _pick(v, 2),
            _pick(v, 3),
        )
        return "CONTROLLER", wire.API_VOTE, body
    if kind in ("begin-quorum-epoch", "end-quorum-epoch"):
        if kind == "begin-quorum-epoch":
            message: Any = BeginQuorumEpochRequest(
                cluster_id=cluster_id, leader_epoch=1, leader_id=1
            )
            api = wire.API_BEGIN_QUORUM_EPOCH
        else:
            message = EndQuorumEpochRequest(
                cluster_id=cluster_id, leader_epoch=1, leader_id=1, preferred_successors=(1,)
            )
            api = wire.API_END_QUORUM_EPOCH
        body = wire.encode(message)
        body[1], body[2] = _pick(v, 0), _member_not(v, 1)
        return "CONTROLLER", api, body
    if kind == "raft-fetch":
        body = wire.encode(
            RaftFetchRequest(
                cluster_id=cluster_id,
                replica_id=1,
                current_leader_epoch=1,
                fetch_offset=0,
                last_fetched_epoch=0,
                max_bytes=1024,
            )
        )
        body[1] = _member_not(v, 0) if _pick(v, 4) % 2 else 10 + _pick(v, 4) % 5  # observer
        body[2], body[3], body[4] = _pick(v, 1), _pick(v, 2), _pick(v, 3)
        return "CONTROLLER", wire.API_FETCH, body
    if kind == "fetch-snapshot":
        body = wire.encode(
            FetchSnapshotRequest(
                cluster_id=cluster_id,
                replica_id=10,
                current_leader_epoch=1,
                snapshot_id=OffsetAndEpoch(offset=1, epoch=1),
                position=0,
                max_bytes=1024,
            )
        )
        body[2], body[3], body[4], body[5] = (
            _pick(v, 0),
            [_pick(v, 1), _pick(v, 2)],
            _pick(v, 3),
            _pick(v, 4),
        )
        return "CONTROLLER", wire.API_FETCH_SNAPSHOT, body
    if kind in ("replica-fetch", "consumer-fetch"):
        replica = kind == "replica-fetch"
        offset = _pick(v, 0)
        if replica and -1 <= offset <= 2**31:
            offset = 2**62  # beyond any log: a believable offset would be a forgery
        item = {
            "partition": _pick(v, 1) % 3,
            "fetch_offset": offset,
            "partition_max_bytes": _pick(v, 2),
            "current_leader_epoch": -1,
            "last_fetched_epoch": _pick(v, 3),
        }
        return (
            "REPLICATION" if replica else "PLAINTEXT",
            ApiKey.FETCH,
            {
                "replica_id": 1 + _pick(v, 4) % 3 if replica else -1,
                "broker_epoch": _pick(v, 5),
                "max_wait_ms": 0,
                "max_bytes": _pick(v, 6),
                "topics": [{"name": topic, "partitions": [item] * (1 + _pick(v, 7) % 3)}],
            },
        )
    if kind == "produce":
        return (
            "PLAINTEXT",
            ApiKey.PRODUCE,
            {
                "acks": -1,
                "timeout_ms": 1000,
                "topics": [
                    {
                        "name": topic,
                        "partitions": [{"partition": _pick(v, 0) % 3, "records": _forged_batch(v)}],
                    }
                ],
            },
        )
    if kind == "metadata":
        return "PLAINTEXT", ApiKey.METADATA, {"topics": [f"t{i}" for i in range(12_000)]}
    if kind == "create-topics":
        names = ("ok\n", "__cluster_metadata\n", "a" * 250, "..", "bad/name")
        name = names[_pick(v, 0) % len(names)]
        return (
            "PLAINTEXT",
            ApiKey.CREATE_TOPICS,
            {
                "topics": [
                    {"name": name, "partitions": _pick(v, 1), "replication_factor": _pick(v, 2)}
                ]
            },
        )
    if kind == "alter-partition":
        return (
            "CONTROLLER",
            ApiKey.ALTER_PARTITION,
            {
                "broker_id": _member_not(v, 0),
                "broker_epoch": _pick(v, 1),
                "topic_id": "no-such-topic",
                "partition": _pick(v, 2),
                "leader_epoch": _pick(v, 3),
                "partition_epoch": _pick(v, 4),
                "new_isr": [_member_not(v, 5)],
            },
        )
    if kind == "heartbeat":
        return (
            "CONTROLLER",
            ApiKey.BROKER_HEARTBEAT,
            {
                "broker_id": _member_not(v, 0),
                "broker_epoch": _pick(v, 1),
                "current_metadata_offset": _pick(v, 2),
            },
        )
    if kind == "delete-records":
        return (
            "PLAINTEXT",
            ApiKey.DELETE_RECORDS,
            {
                "timeout_ms": 1000,
                "topics": [
                    {
                        "name": topic,
                        # Never a real position: deleting committed records is an
                        # admin's right, not an attack.
                        "partitions": [
                            {
                                "partition": _pick(v, 0) % 3,
                                "offset": (2**62, -5, -(2**63))[_pick(v, 1) % 3],
                            }
                        ],
                    }
                ],
            },
        )
    if kind == "list-offsets":
        return (
            "PLAINTEXT",
            ApiKey.LIST_OFFSETS,
            {
                "topics": [
                    {
                        "name": topic,
                        "partitions": [{"partition": _pick(v, 0), "timestamp": _pick(v, 1)}],
                    }
                ]
            },
        )
    raise ValueError(f"unknown hostile template {kind!r}")


def random_requests(rng: Any, count: int, time_s: float) -> tuple[HostileRequest, ...]:
    """`count` hostile requests spread over `time_s` (what `jepsen-like sim --hostile N`
    sends; the tests let Hypothesis choose them instead)."""
    return tuple(
        HostileRequest(
            template=rng.choice(TEMPLATES),
            node=rng.randrange(16),
            values=tuple(rng.choice(EDGE_VALUES) for _ in range(8)),
            at_s=rng.uniform(0, time_s),
        )
        for _ in range(count)
    )


async def send_all(cluster: Any, requests: tuple[HostileRequest, ...], *, topic: str) -> list[str]:
    """Each request at its time (from now); what each got."""
    import trio

    started = trio.current_time()
    outcomes = []
    for request in sorted(requests, key=lambda r: r.at_s):
        await trio.sleep_until(started + request.at_s)
        outcomes.append(await send(cluster, request, topic=topic))
    return outcomes


async def send(cluster: Any, request: HostileRequest, *, topic: str) -> str:
    """Send one; what came back, in a word (for the history). Refusals are expected."""
    nodes = sorted(cluster.configs)
    node = nodes[request.node % len(nodes)]
    listener, api_key, body = build(request, cluster_id=cluster.cluster_id, topic=topic)
    if listener not in cluster.configs[node].listeners or not cluster.is_running(node):
        return "skipped"
    try:
        answer = await cluster.request(node, api_key, body, listener=listener, timeout_s=2)
    except KafkaError as error:
        return f"error {error.code}"
    code = _first_error(answer)
    return "answered" if code is None else f"error {code}"


def _first_error(answer: Any) -> int | None:
    """The first non-zero error code anywhere in a (native) answer."""
    if isinstance(answer, dict):
        code = answer.get("error_code")
        if isinstance(code, int) and code:
            return code
        answer = list(answer.values())
    if isinstance(answer, list):
        for item in answer:
            if isinstance(item, dict | list):
                found = _first_error(item)
                if found is not None:
                    return found
    return None
