"""A hostile peer against a simulated cluster (issue 14): well-framed requests with
hostile values on every listener, among the workload, node restarts (every node at
once, too) and pauses. Throughout, every node stays alive and the simulator's
invariants hold; afterwards every acknowledged record is read back, and every node
has started again from what it wrote."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jepsen_like.sim.hostile import EDGE_VALUES, TEMPLATES, HostileRequest, build
from jepsen_like.sim.runner import SimConfig, simulate

TIME_S = 6.0
FAULTS = ("kill-all", "kill", "pause")

hostile_requests = st.builds(
    HostileRequest,
    template=st.sampled_from(TEMPLATES),
    node=st.integers(0, 15),
    values=st.lists(
        st.sampled_from(EDGE_VALUES) | st.integers(-(2**63), 2**63 - 1), min_size=8, max_size=8
    ).map(tuple),
    at_s=st.floats(0, TIME_S - 1),
)


def run(seed: int, requests: list[HostileRequest]) -> None:
    config = SimConfig(seed=seed, time_s=TIME_S, faults=FAULTS, hostile=tuple(requests))
    result = simulate(config)
    assert result.valid, result.summary


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), requests=st.lists(hostile_requests, min_size=30, max_size=60))
def test_a_hostile_peer_breaks_nothing(seed: int, requests: list[HostileRequest]) -> None:
    run(seed, requests)


@pytest.mark.sweep
@pytest.mark.timeout(3000)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), requests=st.lists(hostile_requests, min_size=30, max_size=90))
def test_many_hostile_peers_break_nothing(seed: int, requests: list[HostileRequest]) -> None:
    run(seed, requests)


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_builds_a_request_for_every_edge(template: str) -> None:
    for value in EDGE_VALUES:
        listener, api_key, body = build(
            HostileRequest(template=template, node=0, values=(value,) * 8, at_s=0),
            cluster_id="c",
            topic="t",
        )
        assert listener in ("PLAINTEXT", "CONTROLLER", "REPLICATION") and api_key >= 0
        assert body is not None
