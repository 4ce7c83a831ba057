"""A run's history: operations in Jepsen's shape, plus the cluster's own events.

Each operation is one JSON object per line:

    {"process": 3, "type": "invoke", "f": "send", "value": [2, "v17"], "time": 812345678}
    {"process": 3, "type": "ok",     "f": "send", "value": [2, 41, "v17"], "time": 815000000}
    {"process": 9, "type": "ok",     "f": "poll", "value": {"2": [[41, "v17"], ...]}, "time": ...}

`type` is invoke, then one of ok (it happened), fail (it certainly did not) or info
(unknown: a timeout or a lost connection after sending may or may not have taken
effect, KAFKA-13574). Cluster events (`"f": "nemesis"`, `"controller"`,
`"partition-leader"`) carry `"process": "nemesis"` or `"cluster"`. Time is
nanoseconds since the run began.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

Op = dict[str, Any]

INVOKE, OK, FAIL, INFO = "invoke", "ok", "fail", "info"


class History:
    def __init__(
        self, sink: IO[str] | None = None, *, clock: Callable[[], int] | None = None
    ) -> None:
        """`clock`: nanoseconds (the machine's monotonic clock unless given: the
        simulator gives trio's mock clock, so that a seed replays the same times)."""
        self.ops: list[Op] = []
        self.sink = sink
        self.clock = clock or time.monotonic_ns
        self._began = self.clock()

    def now(self) -> int:
        return self.clock() - self._began

    def add(self, process: Any, type_: str, f: str, value: Any = None, **extra: Any) -> Op:
        op: Op = {"process": process, "type": type_, "f": f, "value": value, "time": self.now()}
        op.update(extra)
        self.ops.append(op)
        if self.sink is not None:
            self.sink.write(json.dumps(op) + "\n")
        return op

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)


def load(lines: Iterable[str]) -> list[Op]:
    return [json.loads(line) for line in lines if line.strip()]
