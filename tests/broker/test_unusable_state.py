"""A node that finds state it cannot act on says which file and why, in one line, and
exits non-zero (issue 14): no traceback loop, no half start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from broker.cli import embedded_default
from broker.meta_properties import format_directory


@pytest.mark.parametrize(
    "content",
    [
        b"not json at all",
        json.dumps(
            {
                "cluster_id": "c",
                "data_version": 0,
                "leader_epoch": 1,
                "leader_id": 99,
                "node_id": 1,
                "voted_id": 99,
            }
        ).encode(),
        json.dumps(
            {
                "cluster_id": "c",
                "data_version": 0,
                "leader_epoch": 2**31 - 1,
                "leader_id": 1,
                "node_id": 1,
                "voted_id": 1,
            }
        ).encode(),
    ],
)
def test_an_impossible_quorum_state_stops_the_start_in_one_line(tmp_path, content) -> None:
    data_dir = tmp_path / "node"
    config = embedded_default(str(data_dir), 0, 0)
    format_directory(config.data_dir, cluster_id="c", node_id=1)
    (data_dir / "quorum-state").write_bytes(content)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "--data-dir",
            str(data_dir),
            "--port",
            "0",
            "--controller-port",
            "0",
        ],
        capture_output=True,
        timeout=120,
    )
    errors = done.stderr.decode().strip().splitlines()
    assert done.returncode == 2, done.stderr.decode()[-2000:]
    assert errors[-1].startswith("pykraft-server: cannot start: ")
    assert "quorum-state" in errors[-1] and "Traceback" not in done.stderr.decode()
