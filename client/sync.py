"""Blocking Producer, Consumer and Admin for code that does not run trio.

Each object runs a trio loop in a background thread and calls into it; the methods
block until the answer is there. Usable from a plain script or a REPL:

    from client.sync import Producer, Consumer
    with Producer("127.0.0.1:9092") as producer:
        producer.send("orders", b"hello", key=b"k").result()
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from client import admin as async_admin
from client import consumer as async_consumer
from client import producer as async_producer
from client.accumulator import Delivery, RecordMetadata

T = TypeVar("T")


class _Loop:
    """A trio run in a daemon thread that stays up until `close`."""

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self.nursery: trio.Nursery | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    @property
    def in_loop(self) -> bool:
        """Whether the caller is the loop's own thread (a rebalance listener's callback)."""
        return threading.current_thread() is self._thread

    def enter(self, manager: Any) -> Callable[[], None]:
        """`async with manager` in a task of the loop; returns the function that exits it.

        An async context (the producer's nursery) must be entered and left by one
        task, so a long-lived task holds it, not the short calls from this thread.
        """
        release = trio.Event()
        finished = trio.Event()

        async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                async with manager:
                    task_status.started()
                    await release.wait()
            finally:
                finished.set()

        assert self.nursery is not None
        nursery = self.nursery
        self.run(nursery.start, hold)

        def leave() -> None:
            async def wait() -> None:
                release.set()
                await finished.wait()

            self.run(wait)

        return leave

    def close(self) -> None:
        if self._thread.is_alive():
            assert self._stop is not None
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join()


class Future:
    """A send's outcome, for threads: `result(timeout)` blocks for RecordMetadata."""

    def __init__(self, loop: _Loop, delivery: Delivery) -> None:
        self._loop = loop
        self._delivery = delivery

    def done(self) -> bool:
        return self._delivery.done()

    def result(self, timeout: float | None = None) -> RecordMetadata:
        async def wait() -> RecordMetadata:
            if timeout is None:
                return await self._delivery.wait()
            with trio.fail_after(timeout):
                return await self._delivery.wait()

        return self._loop.run(wait)


class Producer:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = _Loop()
        self._producer = async_producer.Producer(*args, **kwargs)
        self._leave = self._loop.enter(self._producer)

    def send(self, topic: str, value: bytes | None, **kwargs: Any) -> Future:
        delivery = self._loop.run(lambda: self._producer.send(topic, value, **kwargs))
        return Future(self._loop, delivery)

    def send_many(self, topic: str, items: list[tuple[bytes | None, bytes | None]]) -> list[Future]:
        """(key, value) pairs in one hop into the loop: much cheaper than one send each."""

        async def send_all() -> list[Delivery]:
            return [await self._producer.send(topic, v, key=k) for k, v in items]

        return [Future(self._loop, d) for d in self._loop.run(send_all)]

    def flush(self) -> None:
        self._loop.run(self._producer.flush)

    # Transactions (a producer made with transactional_id), as the async Producer's.
    def init_transactions(self) -> None:
        self._loop.run(self._producer.init_transactions)

    def begin_transaction(self) -> None:
        self._producer.begin_transaction()

    def send_offsets_to_transaction(self, offsets: Any, group: Any) -> None:
        self._loop.run(lambda: self._producer.send_offsets_to_transaction(offsets, group))

    def commit_transaction(self) -> None:
        self._loop.run(self._producer.commit_transaction)

    def abort_transaction(self) -> None:
        self._loop.run(self._producer.abort_transaction)

    def close(self) -> None:
        try:
            self._leave()  # flushes, then stops the sender
        finally:
            self._loop.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Facade:
    """Every method of the wrapped client runs in its loop; an async one blocks until done.

    Called from the loop's own thread (a consumer's rebalance listener, which runs
    there), a plain method runs at once and an async one cannot be waited for.
    """

    _target: Any

    def __init__(self, target: Any) -> None:
        self._loop = _Loop()
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._loop.in_loop:
                result = attribute(*args, **kwargs)
                if inspect.isawaitable(result):
                    result.close()  # type: ignore[attr-defined]
                    raise RuntimeError(f"{name} blocks: not from a listener's callback")
                return result

            async def run() -> Any:
                # In the loop: the consumer's background tasks start from its thread.
                result = attribute(*args, **kwargs)
                if inspect.isawaitable(result):
                    return await result
                return result

            return self._loop.run(run)

        return call

    def close(self) -> None:
        try:
            self._loop.run(self._target.close)
        finally:
            self._loop.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Consumer(_Facade):
    """The trio Consumer's methods, blocking: assign/seek/poll, and in a group
    subscribe/unsubscribe/commit/commit_async/committed (close leaves the group).
    The consumer is built in the loop: its group's heartbeats run there."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        loop = _Loop()

        async def build() -> async_consumer.Consumer:
            return async_consumer.Consumer(*args, **kwargs)

        try:
            target = loop.run(build)
        except BaseException:
            loop.close()
            raise
        self._loop = loop
        self._target = target


class Admin(_Facade):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(async_admin.Admin(*args, **kwargs))
