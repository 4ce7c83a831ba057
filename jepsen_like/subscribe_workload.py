"""The subscribe workload: the queue workload's producers, read by a consumer group.

Producers are the queue workload's. The readers are `members` OS processes
(`jepsen_like.group_member`), one consumer group, committing after each batch they
process (at least once). The nemesis can kill (SIGKILL, then a new incarnation), pause
(SIGSTOP, SIGCONT) a member, or kill the broker that coordinates the group. Each
member event becomes a history operation (see `group_checkers`); the member's own
monotonic clock times it, which is the history's clock too.

After the heal the producers have stopped; the members keep reading until the group
has committed every partition's log end (or `catch_up_timeout_s` passes), and the
committed offsets are then read once more through the coordinator
(`group-final-committed`), the checker's measure of how far the group got.

    jepsen-like run --workload subscribe --nemesis kill,pause,kill-coordinator,pause-member
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
from typing import Any

import trio

from jepsen_like.history import FAIL, INFO, OK, History
from jepsen_like.workload import QueueWorkload

log = logging.getLogger(__name__)

GROUP = "jepsen-group"
# Kafka brokers refuse less than group.min.session.timeout.ms (6 s), as pykraft does.
SESSION_TIMEOUT_MS = 6_000
# Members outlive the workload by this much unless stopped (they always are).
MEMBER_EXTRA_S = 300.0
CATCH_UP_TIMEOUT_S = 60.0
# Errors after which a commit certainly did not take effect (kafka-python's names).
DEFINITE_COMMIT_FAILURES = frozenset(
    {
        "CommitFailedError",
        "IllegalGenerationError",
        "UnknownMemberIdError",
        "RebalanceInProgressError",
        "FencedInstanceIdError",
    }
)


class SubscribeWorkload(QueueWorkload):
    def __init__(
        self,
        bootstrap: str,
        history: History,
        *,
        members: int = 3,
        group: str = GROUP,
        session_timeout_ms: int = SESSION_TIMEOUT_MS,
        catch_up_timeout_s: float = CATCH_UP_TIMEOUT_S,
        **queue: Any,
    ) -> None:
        super().__init__(bootstrap, history, **queue)
        self.members = members
        self.group = group
        self.session_timeout_ms = session_timeout_ms
        self.catch_up_timeout_s = catch_up_timeout_s
        self._processes: dict[int, trio.Process] = {}
        self._committed: dict[int, int] = {}  # partition -> highest ok commit
        self._nursery: trio.Nursery | None = None
        self._member_time_s = MEMBER_EXTRA_S

    # ------------------------------------------------------------------ the run

    async def run(self, duration_s: float) -> None:
        self._member_time_s = duration_s + MEMBER_EXTRA_S
        async with trio.open_nursery() as producers:
            for process in range(self.producers):
                producers.start_soon(self._producer, process, duration_s)
            assert self._nursery is not None, "start the members first (run_members)"
            for member in range(self.members):
                await self.start_member(member)

    async def run_members(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hosts the member processes' readers until cancelled (then stops them)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self.stop_members()

    async def final_read(self, timeout_s: float = 60.0) -> None:
        await super().final_read(timeout_s)
        ends = self._log_ends()
        with trio.move_on_after(self.catch_up_timeout_s):
            while any(self._committed.get(p, 0) < end for p, end in ends.items()):
                await trio.sleep(0.2)
        committed = await trio.to_thread.run_sync(self._read_committed, abandon_on_cancel=True)
        if committed is not None:
            self.history.add("group", OK, "group-final-committed", committed)
        await self.stop_members()

    def _log_ends(self) -> dict[int, int]:
        for op in reversed(self.history.ops):
            if op["f"] == "final-read":
                return {
                    int(p): (pairs[-1][0] + 1 if pairs else 0) for p, pairs in op["value"].items()
                }
        return {}

    def _read_committed(self) -> dict[str, int] | None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap.split(","), request_timeout_ms=10_000
            )
        except KafkaError as error:
            log.warning("could not read the group's committed offsets: %s", error)
            return None
        try:
            offsets = admin.list_group_offsets(self.group)[self.group]
            return {
                str(tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0
            }
        except KafkaError as error:
            log.warning("could not read the group's committed offsets: %s", error)
            return None
        finally:
            admin.close()

    # ------------------------------------------------------------------ members

    def member_ids(self) -> list[int]:
        return list(range(self.members))

    def is_member_running(self, member: int) -> bool:
        process = self._processes.get(member)
        return process is not None and process.returncode is None

    async def start_member(self, member: int) -> None:
        assert self._nursery is not None
        if self.is_member_running(member):
            return
        process = await trio.lowlevel.open_process(
            [
                sys.executable,
                "-m",
                "jepsen_like.group_member",
                "--bootstrap",
                self.bootstrap,
                "--topic",
                self.topic,
                "--group",
                self.group,
                "--member",
                str(member),
                "--time-s",
                str(math.ceil(self._member_time_s)),
                "--session-timeout-ms",
                str(self.session_timeout_ms),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._processes[member] = process
        self._nursery.start_soon(self._read_events, member, process)

    def kill_member(self, member: int) -> None:
        self._signal(member, signal.SIGKILL)

    def pause_member(self, member: int) -> None:
        self._signal(member, signal.SIGSTOP)

    def resume_member(self, member: int) -> None:
        self._signal(member, signal.SIGCONT)

    def _signal(self, member: int, signum: int) -> None:
        process = self._processes.get(member)
        if process is not None and process.returncode is None:
            os.kill(process.pid, signum)

    async def stop_members(self) -> None:
        """SIGTERM (after SIGCONT: a paused member cannot act on it) and wait; SIGKILL
        whatever has not left within the session timeout's margin."""
        for process in self._processes.values():
            if process.returncode is None:
                for signum in (signal.SIGCONT, signal.SIGTERM):
                    os.kill(process.pid, signum)
        with trio.move_on_after(self.session_timeout_ms / 1000 + 10):
            for process in self._processes.values():
                await process.wait()
        for process in self._processes.values():
            if process.returncode is None:
                os.kill(process.pid, signal.SIGKILL)
                await process.wait()

    async def _read_events(self, member: int, process: trio.Process) -> None:
        assert process.stdout is not None
        name = f"member-{member}"
        pending = b""
        async for chunk in process.stdout:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    self._record(name, json.loads(line))
        await process.wait()

    def _record(self, name: str, event: dict[str, Any]) -> None:
        began = self.history._began
        at = event.pop("time") - began
        kind = event.pop("event")
        if kind == "commit":
            outcome = event.pop("outcome")
            invoked = event.pop("invoked") - began
            if outcome == "ok":
                for partition, offset in event["offsets"].items():
                    self._committed[int(partition)] = max(
                        self._committed.get(int(partition), 0), offset
                    )
                self.history.add(name, OK, "group-commit", event, time=at, invoked=invoked)
            else:
                error = event.pop("error", "")
                kind_of = FAIL if error in DEFINITE_COMMIT_FAILURES else INFO
                self.history.add(
                    name, kind_of, "group-commit", event, time=at, invoked=invoked, error=error
                )
        elif kind in ("assigned", "revoked", "poll"):
            self.history.add(name, OK, f"group-{kind}", event, time=at)
        else:
            self.history.add(name, INFO, f"group-{kind}", event, time=at)
