"""The shapes of the network partitions, as the sets of directed links they cut."""

from __future__ import annotations

import pytest

from jepsen_like.proxy import bridge_cuts, ring_cuts


def _visible(nodes: list[int], cuts: set[tuple[int, int]]) -> dict[int, set[int]]:
    return {a: {b for b in nodes if b != a and (a, b) not in cuts} for a in nodes}


@pytest.mark.parametrize("count", [4, 5, 6, 7])
def test_ring_gives_every_node_a_majority_and_no_two_the_same(count: int) -> None:
    nodes = list(range(1, count + 1))
    cuts = ring_cuts(nodes)
    visible = _visible(nodes, cuts)
    majority = count // 2 + 1
    views = set()
    for node, seen in visible.items():
        assert len(seen) + 1 >= majority
        assert all((node, other) not in cuts and (other, node) not in cuts for other in seen)
        views.add(frozenset(seen | {node}))
        assert seen != set(nodes) - {node}, "a ring must cut something from every node"
    assert len(views) == count


def test_ring_refuses_three_nodes() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        ring_cuts([1, 2, 3])


@pytest.mark.parametrize("count", [3, 5])
def test_bridge_keeps_one_node_seeing_both_sides(count: int) -> None:
    nodes = list(range(1, count + 1))
    visible = _visible(nodes, bridge_cuts(nodes))
    middle = nodes[count // 2]
    assert visible[middle] == set(nodes) - {middle}
    left, right = nodes[: count // 2], nodes[count // 2 + 1 :]
    for a in left:
        assert not visible[a] & set(right)
    for b in right:
        assert not visible[b] & set(left)
