"""The fraud example end to end on a real one-node cluster: generator, one detector
(at least once), alerts; then a replay of the whole range beside it."""

from __future__ import annotations

import pytest

from broker.local_cluster import LocalCluster
from examples.fraud_detection.generator import read_incidents
from examples.fraud_detection.replay import replay
from examples.fraud_detection.run import PipelineRun

pytestmark = pytest.mark.lab  # a cluster, three processes and a 10 s stream: ~30 s


def test_one_detector_finds_every_planted_incident_once(tmp_path) -> None:
    with LocalCluster(str(tmp_path / "cluster"), combined=1) as cluster:
        cluster.start_all()
        run = PipelineRun(
            bootstrap=cluster.bootstrap_servers(),
            workdir=str(tmp_path / "run"),
            rate=500,
            seconds=10,  # 5,000 normal payments: the work is bounded by count
            detectors=1,
            partitions=3,
            replication=1,
            semantics="at-least-once",
            seed=7,
            fraud_share=0.05,
        )
        result = run.execute()
        incidents = read_incidents(run.truth_path)
        assert len(incidents) >= 10
        assert result["events"] >= 5_000
        assert result["lag_end"] == 0
        assert result["planted"] == len({(i.card, i.pattern) for i in incidents})
        assert result["recall"] == 1.0, result
        assert result["false_alerts"] == 0
        assert result["duplicate_alerts"] == 0

        # The payments' own timestamps bound the range: the replay reads all of it.
        first = min(i.ts_ms for i in incidents) - 10_000
        summary = replay(
            bootstrap=run.bootstrap,
            topic=run.payments_topic,
            from_ms=first,
            to_ms=max(i.ts_ms for i in incidents) + 1,
            truth_path=run.truth_path,
        )
        assert summary["planted"] == len(incidents)
        assert sum(summary["alerts_by_rule"].values()) == len(incidents)
        assert summary["events"] > 0
