"""The trio runtime of one quorum member: binds the Raft core to RPC, clock and disk.

Ordering contract (asserted by construction in `_carry_out`, the only place that
acts on a `Ready`):
1. write quorum-state (atomic, fsynced) if the election state changed;
2. flush the metadata log if it was written, then report the flushed end offset;
3. only then send requests, and return the response of the request being handled;
4. wake whoever waits for new data or a higher high-water mark.

The core is only ever called from the trio thread, so it needs no locks. fsync runs
inline: a metadata quorum writes little, and an inline fsync keeps steps 1-3 ordered
without handing the core to another thread.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import trio

from client.protocol.errors import KafkaError
from client.protocol.rpc import ConnectionLost, Handler, RpcClient, RpcServer
from kraft.quorum_state_file import QuorumStateFile
from kraft.raft.core import LeaderAndEpoch, NotLeaderError, RaftConfig, RaftCore
from kraft.raft.log import SegmentedRaftLog
from kraft.raft.messages import (
    FetchRequest,
    FetchResponse,
    Inbound,
    OffsetAndEpoch,
    Outbound,
    Request,
    Response,
)
from kraft.raft.progress import ReplicaProgress
from kraft.raft.state import Leader
from kraft.raft.wire import (
    API_KEY_OF,
    API_VERSION,
    REQUEST_TYPES,
    decode_request,
    decode_response,
    encode,
)
from storage.fs import FileSystem, OsFileSystem
from storage.log import LogConfig, SegmentedLog
from storage.records import iter_batches

log = logging.getLogger(__name__)

METADATA_LOG_DIR = "__cluster_metadata-0"
# Kafka's metadata log uses small segments: metadata is small and snapshotted.
METADATA_SEGMENT_BYTES = 8 * 1024 * 1024


class RaftNode:
    def __init__(
        self,
        *,
        config: RaftConfig,
        directory: str,
        voter_addresses: dict[int, tuple[str, int]],
        rng: random.Random,
        fs: FileSystem | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        listen: bool = True,
        other_apis: Handler | None = None,
    ) -> None:
        self.config = config
        self.directory = directory
        self.voter_addresses = voter_addresses
        self.rng = rng
        self.fs = fs if fs is not None else OsFileSystem()
        self.host = host
        self.port = port
        # An observer (a broker-only node) is never asked anything by the quorum.
        self.listen = listen
        # The controller's APIs share the quorum's listener, as in Kafka.
        self.other_apis = other_apis
        self.core: RaftCore | None = None
        self._clients: dict[int, RpcClient] = {}
        self._nursery: trio.Nursery | None = None
        self._wakeup = trio.Event()
        self._changed = trio.Event()
        self._stopped = trio.Event()
        self._killed = False
        # True between start and stop; a stopped node's core keeps its last state.
        self.running = False
        self.snapshots_installed = 0
        self._last_seen: tuple[int, int, LeaderAndEpoch] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the log and quorum-state, serve the quorum RPCs, drive the core."""
        self.fs.makedirs(self.directory)
        self.store = QuorumStateFile(
            self.fs,
            self.directory,
            cluster_id=self.config.cluster_id,
            node_id=self.config.local_id,
            voters=self.config.voters,
        )
        # A corrupt file, or one naming a state no member could act on, stops the node
        # here with a one-line QuorumStateError, before it binds or opens anything else.
        election = self.store.read()
        self.segmented = SegmentedLog.open(
            f"{self.directory}/{METADATA_LOG_DIR}",
            LogConfig(segment_bytes=METADATA_SEGMENT_BYTES, retention_ms=-1),
            fs=self.fs,
        )
        self.log = SegmentedRaftLog(self.segmented)
        self.core = RaftCore(self.config, self.log, election, self.rng, self.now_ms())
        server = RpcServer(self._handle_rpc, name=f"raft-{self.config.local_id}")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.listen:
                    self.port = await nursery.start(server.serve, self.host, self.port)
                self.running = True
                task_status.started(self.port)
                await self._drive()
        finally:
            self.running = False
            with trio.CancelScope(shield=True):
                for client in self._clients.values():
                    await client.aclose()
            if not self._killed:
                self.segmented.close()
            self._stopped.set()

    async def shutdown(self, *, timeout_s: float = 1.0) -> None:
        """Graceful stop: a leader resigns first and tells the voters (EndQuorumEpoch)."""
        core = self._require_core()
        core.resign(self.now_ms())
        self._carry_out()
        with trio.move_on_after(timeout_s):
            await trio.sleep(0.05)  # let the EndQuorumEpoch requests leave
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def kill(self) -> None:
        """Stop at once, like SIGKILL: no resignation, no final flush (tests, fault lab)."""
        self._killed = True
        self.running = False
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def now_ms(self) -> int:
        return int(trio.current_time() * 1000)

    def _require_core(self) -> RaftCore:
        if self.core is None:
            raise RuntimeError("the node is not running")
        return self.core

    # ------------------------------------------------------------------ driving

    async def _drive(self) -> None:
        core = self._require_core()
        while True:
            core.tick(self.now_ms())
            self._carry_out()
            # Our own carry-out just set the wake-up; only later events (a response, a
            # request, a proposal, which may bring the next deadline forward) should
            # end this wait. Without this reset the loop spins (it cost 39% of a
            # broker's CPU under load).
            self._wakeup = trio.Event()
            # Half a millisecond past the deadline: `now_ms` rounds down, and a wake-up
            # a float's rounding short of the deadline would find nothing due and wait
            # for the same instant again (forever, under a mock clock).
            deadline_s = (core.next_deadline_ms() + 0.5) / 1000
            with trio.move_on_at(deadline_s):
                await self._wakeup.wait()

    def _carry_out(self) -> None:
        core = self._require_core()
        messages: list[Outbound] = []
        while True:
            ready = core.ready()
            if ready.election_state is not None:
                self.store.write(ready.election_state)
            if ready.snapshot_installed is not None:
                self.snapshots_installed += 1
            messages.extend(ready.messages)
            if not ready.log_dirty:
                break
            self.segmented.flush()
            core.on_flushed(self.now_ms(), self.log.log_end_offset)
        assert self._nursery is not None
        for outbound in messages:
            self._nursery.start_soon(self._send, outbound)
        # Compared with what waiters last saw, not with the start of this call: the
        # core may have moved (a Fetch raised the high-water mark) before it.
        seen = (core.high_watermark, self.log.log_end_offset, core.leader())
        if seen != self._last_seen:
            self._last_seen = seen
            self._changed.set()
            self._changed = trio.Event()
        self._wakeup.set()

    async def _send(self, outbound: Outbound) -> None:
        core = self._require_core()
        response: Response | None = None
        unreachable = False
        try:
            client = self._client(outbound.destination)
            body = await client.request(
                API_KEY_OF[type(outbound.request)],
                API_VERSION,
                encode(outbound.request),
                timeout_s=self.config.request_timeout_ms / 1000,
            )
            response = decode_response(outbound.request, body)
        except KafkaError as error:
            unreachable = isinstance(error, ConnectionLost)
            log.debug(
                "node %d: %s to %d failed: %s",
                self.config.local_id,
                type(outbound.request).__name__,
                outbound.destination,
                error,
            )
        core.handle_response(
            self.now_ms(),
            Inbound(
                source=outbound.destination,
                request_id=outbound.request_id,
                response=response,
                unreachable=unreachable,
            ),
        )
        self._carry_out()

    def _client(self, node_id: int) -> RpcClient:
        client = self._clients.get(node_id)
        if client is None:
            # The core only ever addresses voters (it refuses peers' claims otherwise).
            assert node_id in self.voter_addresses, f"no address for node {node_id}"
            host, port = self.voter_addresses[node_id]
            client = RpcClient(host, port, client_id=f"raft-{self.config.local_id}", rng=self.rng)
            self._clients[node_id] = client
        return client

    async def _handle_rpc(self, api_key: int, version: int, body: Any) -> Any:
        if api_key not in REQUEST_TYPES and self.other_apis is not None:
            return await self.other_apis(api_key, version, body)
        core = self._require_core()
        request = decode_request(api_key, version, body)
        response = self._answer(core, request)
        if isinstance(request, FetchRequest) and request.max_wait_ms > 0:
            # Long poll (like Kafka's fetch purgatory): hold an empty answer until the
            # log or the high-water mark moves, or the wait runs out.
            first_high_watermark = core.high_watermark
            with trio.move_on_after(request.max_wait_ms / 1000):
                while (
                    _nothing_new(request, response) and core.high_watermark == first_high_watermark
                ):
                    await self._changed.wait()
                    response = self._answer(core, request)
        return encode(response)

    def _answer(self, core: RaftCore, request: Request) -> Response:
        response = core.handle_request(self.now_ms(), _sender(request), request)
        self._carry_out()  # persist and flush before the answer leaves
        return response

    # ------------------------------------------------------------------ the API above

    def leader(self) -> LeaderAndEpoch:
        return self._require_core().leader()

    @property
    def high_watermark(self) -> int:
        return self._require_core().high_watermark

    @property
    def log_end_offset(self) -> int:
        return self.log.log_end_offset

    def leader_epoch_start(self) -> int | None:
        """The offset of this leader's leader-change record; None unless leading."""
        state = self._require_core().state
        return state.epoch_start_offset if isinstance(state, Leader) else None

    def replica_progress(self) -> list[ReplicaProgress]:
        """What the leader knows of every voter and observer ([] unless leading)."""
        progress = self._require_core().progress
        return [] if progress is None else list(progress.replicas.values())

    async def wait_for_change(self) -> None:
        """Until the high-water mark, the log end or the leader changes."""
        await self._changed.wait()

    def propose(self, values: Sequence[bytes]) -> int:
        """Append entries as leader; the offset of the last one (NotLeaderError otherwise)."""
        core = self._require_core()
        offset = core.propose(self.now_ms(), values)
        self._carry_out()
        return offset

    async def wait_committed(self, offset: int) -> None:
        """Until `offset` is below the high-water mark; NotLeaderError if leadership moves first."""
        core = self._require_core()
        epoch = core.epoch
        while core.high_watermark <= offset:
            if core.epoch != epoch:
                raise NotLeaderError(core.leader())
            await self._changed.wait()

    async def wait_for_leader(self) -> LeaderAndEpoch:
        core = self._require_core()
        while core.leader().leader_id < 0:
            await self._changed.wait()
        return core.leader()

    def write_snapshot(self, end_offset: int, values: Sequence[bytes]) -> OffsetAndEpoch:
        """Snapshot the state machine as of `end_offset` (committed); the log before it goes."""
        core = self._require_core()
        if end_offset > core.high_watermark:
            raise ValueError(
                f"offset {end_offset} is not committed (high-water mark {core.high_watermark})"
            )
        return self.log.create_snapshot(end_offset, values, self.now_ms())

    def snapshot(self) -> tuple[OffsetAndEpoch | None, list[bytes]]:
        """The latest snapshot's id and records, to rebuild the state machine from."""
        return self.log.latest_snapshot_id(), self.log.snapshot_values()

    async def follow(self, start: int = 0) -> AsyncIterator[Committed]:
        """Everything committed from `start` on, in order, for a state machine to apply.

        Yields a `SnapshotLoaded` whenever the log no longer holds the next offset (it
        was snapshotted here, or a snapshot was fetched from the leader), then the
        committed batches after it. Waits for more when caught up; runs until cancelled.
        """
        core = self._require_core()
        position = start
        while True:
            if position < self.log.log_start_offset:
                snapshot_id, values = self.snapshot()
                assert snapshot_id is not None, "log start moved without a snapshot"
                yield SnapshotLoaded(snapshot_id=snapshot_id, values=values)
                position = snapshot_id.offset
                continue
            if position >= core.high_watermark:
                await self._changed.wait()
                continue
            for batch in self.committed_batches(position):
                header = next(iter_batches(batch, validate=False))[1]
                yield CommittedBatch(base_offset=header.base_offset, data=batch)
                position = header.next_offset

    async def wait_leader_change(self, known: LeaderAndEpoch) -> LeaderAndEpoch:
        """Return once the leader or epoch differs from `known`."""
        core = self._require_core()
        while core.leader() == known:
            await self._changed.wait()
        return core.leader()

    def committed_batches(self, start: int) -> list[bytes]:
        """Committed batches from `start` up to the high-water mark (for the state machine)."""
        return self.log.batches(start, self._require_core().high_watermark)


@attrs.frozen(kw_only=True)
class CommittedBatch:
    base_offset: int
    data: bytes  # one record batch, as stored


@attrs.frozen(kw_only=True)
class SnapshotLoaded:
    snapshot_id: OffsetAndEpoch
    values: list[bytes]


Committed = CommittedBatch | SnapshotLoaded


def _sender(request: Request) -> int:
    for field in ("replica_id", "candidate_id", "leader_id"):
        sender = getattr(request, field, None)
        if isinstance(sender, int):
            return sender
    return -1


def _nothing_new(request: FetchRequest, response: Response) -> bool:
    return (
        isinstance(response, FetchResponse)
        and response.error_code == 0
        and not response.records
        and response.diverging_epoch is None
    )
