"""A whole quorum of pure Raft cores in one process, driven message by message.

Each node has a real `SegmentedLog` on its own `MemoryFileSystem`; its quorum-state
is "persisted" only when the harness carries out a `Ready`, exactly as the runtime's
ordering contract says. The test decides which message is delivered, dropped or
duplicated, when time passes and who crashes, and the harness checks the Raft
safety properties after every step.
"""

from __future__ import annotations

import random

import attrs

from kraft.raft.core import RaftConfig, RaftCore
from kraft.raft.log import SegmentedRaftLog
from kraft.raft.messages import Inbound, Request, Response
from kraft.raft.state import ElectionState, Leader
from storage.fs import MemoryFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.records import iter_batches, iter_records

CLUSTER_ID = "test-cluster"
LOG_DIR = "/meta/__cluster_metadata-0"


@attrs.frozen
class Envelope:
    source: int
    destination: int
    request_id: int
    request: Request | None = None
    response: Response | None = None
    # The requester's incarnation: after a restart its old requests' answers are void,
    # as they would be on a real connection that died with the old process.
    incarnation: int = 0


@attrs.frozen
class Entry:
    offset: int
    epoch: int
    value: bytes


class Node:
    def __init__(self, node_id: int, voters: frozenset[int], seed: int, now_ms: int) -> None:
        self.node_id = node_id
        self.voters = voters
        self.fs = MemoryFileSystem()
        self.rng = random.Random(seed)
        self.persisted = ElectionState(epoch=0)
        self.incarnation = 0
        self.start(now_ms)

    def start(self, now_ms: int) -> None:
        self.segmented = SegmentedLog.open(LOG_DIR, LogConfig(segment_bytes=4096), fs=self.fs)
        self.log = SegmentedRaftLog(self.segmented)
        config = RaftConfig(local_id=self.node_id, voters=self.voters, cluster_id=CLUSTER_ID)
        self.core = RaftCore(config, self.log, self.persisted, self.rng, now_ms)
        self.incarnation += 1

    def entries(self) -> list[Entry]:
        # Cached by what changes when the log does; the safety checks call this a lot.
        key = (
            self.incarnation,
            self.log.log_start_offset,
            self.log.log_end_offset,
            self.log.last_fetched_epoch(),
            self.segmented.size_bytes(),
        )
        if getattr(self, "_entries_key", None) == key:
            return self._entries
        self._entries_key = key
        self._entries = self._read_entries()
        return self._entries

    def _read_entries(self) -> list[Entry]:
        found = []
        snapshot_id = self.log.latest_snapshot_id()
        if snapshot_id is not None:
            # A snapshot stands for the entries below its end: the harness's snapshots
            # store them whole, as "offset:epoch:value" strings.
            for raw in self.log.snapshot_values():
                offset, epoch, value = raw.split(b":", 2)
                found.append(Entry(int(offset), int(epoch), value))
        for batch in self.log.batches(self.log.log_start_offset, self.log.log_end_offset):
            header = next(iter_batches(batch))[1]
            for record in iter_records(batch):
                found.append(
                    Entry(record.offset, header.partition_leader_epoch, record.value or b"")
                )
        return found


class Cluster:
    def __init__(self, voters: int = 3, observers: int = 0, seed: int = 0) -> None:
        self.now_ms = 0
        voter_ids = frozenset(range(1, voters + 1))
        ids = sorted(voter_ids) + list(range(voters + 1, voters + observers + 1))
        self.nodes = {i: Node(i, voter_ids, seed * 1000 + i, self.now_ms) for i in ids}
        self.network: list[Envelope] = []
        self.isolated: set[int] = set()
        self.leaders_by_epoch: dict[int, int] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}  # offset -> (epoch, value)
        self.commit_epochs: dict[int, int] = {}  # offset -> epoch when first known committed
        self.leader_logs: dict[tuple[int, int], list[Entry]] = {}
        self.applied_hwm: dict[int, int] = dict.fromkeys(self.nodes, 0)
        self.proposed: list[bytes] = []
        for node_id in self.nodes:
            self._carry_out(node_id, respond_to=None)

    # -- driving

    def _carry_out(
        self, node_id: int, respond_to: Envelope | None, response: Response | None = None
    ) -> None:
        """The runtime's ordering contract: persist, flush, send, apply."""
        node = self.nodes[node_id]
        messages = []
        while True:
            ready = node.core.ready()
            if ready.election_state is not None:
                node.persisted = ready.election_state
            messages.extend(ready.messages)
            if not ready.log_dirty:
                break
            node.segmented.flush()
            node.core.on_flushed(self.now_ms, node.log.log_end_offset)
        for outbound in messages:
            self.network.append(
                Envelope(
                    node_id,
                    outbound.destination,
                    outbound.request_id,
                    request=outbound.request,
                    incarnation=node.incarnation,
                )
            )
        if respond_to is not None and response is not None:
            self.network.append(
                Envelope(
                    node_id,
                    respond_to.source,
                    respond_to.request_id,
                    response=response,
                    incarnation=respond_to.incarnation,
                )
            )
        self._record_commits(node_id)
        self.check_safety()

    def deliver(self, index: int, *, duplicate: bool = False) -> None:
        if not self.network:
            return
        envelope = self.network[index % len(self.network)]
        if not duplicate:
            self.network.remove(envelope)
        if envelope.source in self.isolated or envelope.destination in self.isolated:
            return  # lost to the partition
        destination = self.nodes[envelope.destination]
        if envelope.request is not None:
            response = destination.core.handle_request(
                self.now_ms, envelope.source, envelope.request
            )
            self._carry_out(envelope.destination, envelope, response)
        elif envelope.incarnation == destination.incarnation:
            destination.core.handle_response(
                self.now_ms,
                Inbound(
                    source=envelope.source,
                    request_id=envelope.request_id,
                    response=envelope.response,
                ),
            )
            self._carry_out(envelope.destination, None)

    def drop(self, index: int) -> None:
        if self.network:
            self.network.pop(index % len(self.network))

    def advance(self, milliseconds: int) -> None:
        self.now_ms += milliseconds
        for node_id, node in self.nodes.items():
            node.core.tick(self.now_ms)
            self._carry_out(node_id, None)

    def snapshot(self, node_id: int) -> bool:
        """The node snapshots everything it has committed (and drops that log prefix)."""
        node = self.nodes[node_id]
        hwm = node.core.high_watermark
        if hwm <= node.log.log_start_offset:
            return False
        entries = [e for e in node.entries() if e.offset < hwm]
        values = [f"{e.offset}:{e.epoch}:".encode() + e.value for e in entries]
        node.log.create_snapshot(hwm, values, self.now_ms)
        node._entries_key = None
        return True

    def propose(self, node_id: int, value: bytes) -> bool:
        node = self.nodes[node_id]
        if not node.core.is_leader():
            return False
        node.core.propose(self.now_ms, [value])
        self.proposed.append(value)
        self._carry_out(node_id, None)
        return True

    def crash(self, node_id: int, *, rng: random.Random | None = None) -> None:
        """Stop the node, keep only what it synced, restart it from its quorum-state."""
        node = self.nodes[node_id]
        node.fs.crash(rng or random.Random(node_id))
        node.start(self.now_ms)
        self.applied_hwm[node_id] = 0
        self._carry_out(node_id, None)

    def step(self, tick_ms: int) -> None:
        """Deliver the oldest message (costing a millisecond of latency), or let time pass.

        Without the first, fetches that find nothing new would ping-pong forever and
        freeze the clock; the real runtime long-polls instead.
        """
        if self.network:
            self.deliver(0)
            self.advance(1)
        else:
            self.advance(tick_ms)

    def run(self, *, steps: int = 1_000, tick_ms: int = 50) -> None:
        for _ in range(steps):
            self.step(tick_ms)

    def run_until(self, condition, *, steps: int = 20_000, tick_ms: int = 50) -> None:
        for _ in range(steps):
            if condition():
                return
            self.step(tick_ms)
        raise AssertionError("condition not reached")

    def leader(self) -> int | None:
        leaders = [
            i for i, n in self.nodes.items() if n.core.is_leader() and i not in self.isolated
        ]
        if not leaders:
            return None
        return max(leaders, key=lambda i: self.nodes[i].core.epoch)

    # -- safety

    def _record_commits(self, node_id: int) -> None:
        node = self.nodes[node_id]
        hwm = node.core.high_watermark
        if hwm <= self.applied_hwm[node_id]:
            return
        for entry in node.entries():
            if self.applied_hwm[node_id] <= entry.offset < hwm:
                known = self.committed.get(entry.offset)
                assert known is None or known == (entry.epoch, entry.value), (
                    f"state machine safety: node {node_id} applies {entry} at offset "
                    f"{entry.offset}, another node applied {known}"
                )
                self.committed[entry.offset] = (entry.epoch, entry.value)
                self.commit_epochs.setdefault(entry.offset, node.core.epoch)
        self.applied_hwm[node_id] = hwm

    def check_safety(self) -> None:
        logs = {node_id: node.entries() for node_id, node in self.nodes.items()}
        for node_id, node in self.nodes.items():
            state = node.core.state
            if isinstance(state, Leader):
                # Election safety: one leader per epoch, ever.
                known = self.leaders_by_epoch.setdefault(state.epoch, node_id)
                assert known == node_id, f"epoch {state.epoch} has leaders {known} and {node_id}"
                # Leader append-only: what it held as leader is still there, unchanged.
                key = (node_id, state.epoch)
                before = self.leader_logs.get(key, [])
                assert logs[node_id][: len(before)] == before, f"leader {node_id} rewrote its log"
                self.leader_logs[key] = logs[node_id]
                # Leader completeness: every entry committed in an earlier or this epoch.
                by_offset = {entry.offset: (entry.epoch, entry.value) for entry in logs[node_id]}
                for offset, value in self.committed.items():
                    if self.commit_epochs[offset] <= state.epoch:
                        assert by_offset.get(offset) == value, (
                            f"leader {node_id} of epoch {state.epoch} lacks committed offset {offset}"
                        )
        # Log matching: same offset and epoch in two logs means same prefix.
        ids = sorted(logs)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                _check_log_matching(a, logs[a], b, logs[b])


def _check_log_matching(a: int, log_a: list[Entry], b: int, log_b: list[Entry]) -> None:
    by_offset_b = {entry.offset: entry for entry in log_b}
    last_match = -1
    for entry in log_a:
        other = by_offset_b.get(entry.offset)
        if other is not None and other.epoch == entry.epoch:
            last_match = entry.offset
    if last_match < 0:
        return
    prefix_a = [e for e in log_a if e.offset <= last_match]
    prefix_b = [e for e in log_b if e.offset <= last_match]
    start = max(prefix_a[0].offset, prefix_b[0].offset)
    assert [e for e in prefix_a if e.offset >= start] == [
        e for e in prefix_b if e.offset >= start
    ], (
        f"log matching: nodes {a} and {b} share (offset {last_match}, same epoch) but differ before it"
    )
