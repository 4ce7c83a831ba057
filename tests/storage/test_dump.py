"""python -m storage.dump prints batches, records and problems like kafka-dump-log."""

from __future__ import annotations

import subprocess
import sys

from storage.dump import main
from storage.log import LogConfig, SegmentedLog
from storage.records import RecordInput, build_batch


def make_log(directory: str) -> None:
    log = SegmentedLog.open(directory, LogConfig(segment_bytes=300))
    for index in range(6):
        records = [RecordInput(timestamp=1_000 + index, key=b"k", value=f"value-{index}".encode())]
        log.append(build_batch(records), leader_epoch=2)
    log.close()


def test_dump_directory_with_records(tmp_path, capsys) -> None:
    directory = str(tmp_path / "orders-0")
    make_log(directory)
    assert main([directory, "--records"]) == 0
    out = capsys.readouterr().out
    assert out.count("baseOffset:") == 6
    assert "partitionLeaderEpoch: 2" in out and "isvalid: true" in out
    assert "payload: value-5" in out
    assert "leader-epoch-checkpoint:" in out


def test_dump_reports_a_corrupt_batch_and_exits_nonzero(tmp_path, capsys) -> None:
    directory = tmp_path / "orders-0"
    make_log(str(directory))
    segment = directory / "00000000000000000000.log"
    data = bytearray(segment.read_bytes())
    data[70] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert main([str(segment)]) == 1
    assert "isvalid: false" in capsys.readouterr().out


def test_dump_as_a_module_on_a_bad_path() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "storage.dump", "/nonexistent/x.log"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
