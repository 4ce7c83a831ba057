"""Group commit of one log's appends: one fsync covers every append that arrived
while the previous one ran, and none runs on the event loop.

The first caller that needs durability prepares a flush (the small parts, on the
loop), syncs the active segment's file in a worker thread and completes the flush;
callers arriving meanwhile wait for it and, if it did not cover them, the next one.
In-memory file systems (the simulator's) sync at once, on the loop, so a seed still
gives one history.
"""

from __future__ import annotations

import trio

from client.protocol.errors import ErrorCode, KafkaError
from storage.log import SegmentedLog


class GroupCommit:
    def __init__(self, log: SegmentedLog, *, blocking_io: bool) -> None:
        self.log = log
        self.blocking_io = blocking_io
        self.fsyncs = 0
        self._running: trio.Event | None = None

    async def wait_durable(self, end_offset: int) -> None:
        """Until every record below `end_offset` (or the log end, if smaller) is synced;
        KafkaError(KAFKA_STORAGE_ERROR) if an fsync fails."""
        while self.log.durable_end_offset < end_offset:
            if self._running is not None:
                await self._running.wait()
                continue
            pending = self.log.prepare_flush()
            if pending is None:
                return  # truncated below `end_offset`: all that is left is durable
            done = self._running = trio.Event()
            try:
                if self.blocking_io:
                    await trio.to_thread.run_sync(pending.file.sync)
                else:
                    pending.file.sync()
                self.fsyncs += 1
            except OSError as error:
                self.log.fail_flush(pending, error)
                raise KafkaError(
                    ErrorCode.KAFKA_STORAGE_ERROR, f"{self.log.directory}: fsync failed: {error}"
                ) from error
            else:
                self.log.complete_flush(pending)
            finally:
                self._running = None
                done.set()
