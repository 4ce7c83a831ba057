"""Node configuration, storage formatting, and `pykraft-server` as a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import trio

from broker import meta_properties
from broker.cli import main
from broker.cluster_plan import free_ports, plan_cluster
from broker.config import ConfigError, load, node_config_from
from client.protocol.apis import API_VERSION, ApiKey
from client.protocol.errors import ErrorCode
from client.protocol.rpc import RpcClient

VALID = {
    "node_id": 1,
    "roles": ["controller", "broker"],
    "data_dir": "/tmp/x",
    "listeners": "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093,REPLICATION://127.0.0.1:9094",
    "controller_quorum_voters": "1@127.0.0.1:9093",
}


def test_a_valid_config_round_trips_through_toml(tmp_path) -> None:
    for config in plan_cluster(str(tmp_path), controllers=3, brokers=2, rack="r1"):
        path = tmp_path / f"{config.node_id}.toml"
        path.write_text(config.to_toml())
        assert load(str(path)) == config


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"colour": "blue"}, "unknown settings: colour"),
        ({"node_id": "1"}, "node_id must be int"),
        ({"roles": ["leader"]}, "roles must be"),
        ({"controller_quorum_voters": "1@127.0.0.1:9094"}, "voter address"),
        ({"controller_quorum_voters": "2@127.0.0.1:9093"}, "not in controller_quorum_voters"),
        ({"controller_quorum_voters": "x@h:1"}, "is not id@host:port"),
        ({"listeners": "SSL://127.0.0.1:1"}, "is not NAME://host:port"),
        ({"listeners": "CONTROLLER://127.0.0.1:9093"}, "needs a PLAINTEXT listener"),
        (
            {"listeners": "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"},
            "needs a REPLICATION listener",
        ),
        ({"broker_heartbeat_interval_ms": 10_000}, "must be below"),
    ],
)
def test_bad_configs_are_refused_with_the_reason(change, complaint) -> None:
    with pytest.raises(ConfigError, match=complaint):
        node_config_from({**VALID, **change})


def test_missing_settings_are_named() -> None:
    settings = dict(VALID)
    del settings["data_dir"]
    with pytest.raises(ConfigError, match="data_dir is required"):
        node_config_from(settings)


def test_format_and_the_checks_at_start(tmp_path, capsys) -> None:
    config = plan_cluster(str(tmp_path), combined=1)[0]
    path = tmp_path / "node.toml"
    path.write_text(config.to_toml())
    # Never formatted: refused, nothing created.
    assert main(["start", "--config", str(path)]) == 2
    assert "not formatted" in capsys.readouterr().err
    assert main(["format", "--config", str(path), "--cluster-id", "abc"]) == 0
    assert meta_properties.check(config.data_dir, 1) == "abc"
    # Formatting twice is refused unless asked to ignore it; the id stays.
    assert main(["format", "--config", str(path), "--cluster-id", "other"]) == 2
    assert main(["format", "--config", str(path), "--ignore-formatted"]) == 0
    assert meta_properties.check(config.data_dir, 1) == "abc"
    with pytest.raises(meta_properties.MetaPropertiesError, match="belongs to node 1"):
        meta_properties.check(config.data_dir, 2)
    path.write_text("node_id = [")
    assert main(["start", "--config", str(path)]) == 2
    assert "bad configuration" in capsys.readouterr().err


@pytest.mark.slow
async def test_the_embedded_default_formats_serves_and_stops_on_sigterm(tmp_path) -> None:
    data_dir = tmp_path / "data"
    broker_port, controller_port = free_ports(2)
    command = [
        sys.executable,
        "-m",
        "broker.cli",
        "--data-dir",
        str(data_dir),
        "--port",
        str(broker_port),
        "--controller-port",
        str(controller_port),
    ]
    cluster_ids = []
    for attempt in range(2):
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(tmp_path)
        )
        try:
            assert process.stdout is not None
            lines = [process.stdout.readline(), process.stdout.readline()]
            assert b"bootstrap servers 127.0.0.1:%d" % broker_port in lines[0]
            assert b"ready" in lines[1]
            client = RpcClient(
                "127.0.0.1", broker_port, client_id="t", rng=__import__("random").Random()
            )
            body = {"topics": [{"name": f"t{attempt}", "partitions": 2, "replication_factor": 1}]}
            with trio.fail_after(20):
                while True:
                    answer = await client.request(
                        ApiKey.CREATE_TOPICS, API_VERSION, body, timeout_s=10
                    )
                    code = answer.get("topics", [answer])[0]["error_code"]
                    if code != ErrorCode.REQUEST_TIMED_OUT:
                        break
            assert code == ErrorCode.NONE
            await client.aclose()
            cluster_ids.append(meta_properties.check(str(data_dir), 1))
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
    # The second start found the directory formatted and kept its cluster id.
    assert cluster_ids[0] == cluster_ids[1]
    assert os.path.exists(data_dir / "quorum-state")
