"""The README's main command runs end to end."""

from __future__ import annotations

import subprocess
import sys


def test_demo_fails_over_and_rejoins() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kraft.demo", "--records", "1000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "failover: node" in result.stdout and "rejoin: node" in result.stdout
