"""The run report names only the files it wrote, and says how to get the plot."""

from __future__ import annotations

import sys

import pytest

from jepsen_like import cli, report
from jepsen_like.run import RunResult


@pytest.fixture
def no_matplotlib(monkeypatch):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)


def _write(tmp_path) -> str | None:
    return report.write_report(
        str(tmp_path), [], [], "verdict: VALID", {"per_second": {}, "windows": []}
    )


def test_without_matplotlib_no_png_and_the_summary_says_how_to_get_it(
    tmp_path, no_matplotlib
) -> None:
    assert _write(tmp_path) is None
    assert not (tmp_path / "timeline.png").exists()
    summary = (tmp_path / "summary.txt").read_text()
    assert "pip install -e '.[lab]'" in summary


def test_describe_report_names_only_what_exists(tmp_path) -> None:
    (tmp_path / "summary.txt").write_text("x")
    (tmp_path / "history.jsonl").write_text("")
    line = report.describe_report(str(tmp_path))
    assert "summary.txt, history.jsonl)" in line
    assert "timeline.png" not in line.splitlines()[0]
    assert "cluster/node-*.log" not in line
    assert "pip install -e '.[lab]'" in line
    (tmp_path / "timeline.png").write_bytes(b"png")
    (tmp_path / "cluster").mkdir()
    (tmp_path / "cluster" / "node-1.log").write_text("")
    line = report.describe_report(str(tmp_path))
    assert line.endswith("(summary.txt, history.jsonl, timeline.png, cluster/node-*.log)")


def test_demo_without_matplotlib_ends_naming_what_it_wrote(
    tmp_path, monkeypatch, capsys, no_matplotlib
) -> None:
    async def fake_run(config):  # the demo's 45 s of real processes, replaced
        (tmp_path / "history.jsonl").write_text("")
        _write(tmp_path)
        return RunResult(valid=True, summary="verdict: VALID", stats={}, windows=[], out=config.out)

    monkeypatch.setattr(cli, "run", fake_run)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-2:]
    assert last[0] == f"report: {tmp_path} (summary.txt, history.jsonl)"
    assert "pip install -e '.[lab]'" in last[1]
