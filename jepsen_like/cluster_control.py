"""What nemeses, workloads and the observer need of a cluster, real or simulated."""

from __future__ import annotations

import random
from typing import Any, Protocol

from broker.config import NodeConfig


class ClusterControl(Protocol):
    configs: dict[int, NodeConfig]

    @property
    def controller_ids(self) -> list[int]: ...

    @property
    def broker_ids(self) -> list[int]: ...

    def bootstrap_servers(self) -> str: ...

    def is_running(self, node: int) -> bool: ...

    async def request(
        self, node: int, api_key: int, body: Any, *, listener: str = "", timeout_s: float = 10
    ) -> Any: ...

    async def wait_images_agree(self) -> str: ...

    async def start_all(self) -> None: ...

    async def start(self, node: int) -> None: ...

    async def stop(self, node: int) -> None: ...

    def kill(self, node: int) -> None: ...

    def pause(self, node: int) -> None: ...

    def resume(self, node: int) -> None: ...

    def damage_segment(
        self, node: int, rng: random.Random, topic: str
    ) -> dict[str, Any] | None: ...
