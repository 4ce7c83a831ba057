"""quorum-state survives crashes whole, and a damaged one stops the node."""

from __future__ import annotations

import random

import pytest

from kraft.quorum_state_file import QuorumStateError, QuorumStateFile
from kraft.raft.state import ElectionState
from storage.checkpoint import write_atomically
from storage.fs import MemoryFileSystem, OsFileSystem


def test_round_trip_and_crash_keeps_the_last_written_state() -> None:
    fs = MemoryFileSystem()
    fs.makedirs("/meta")
    store = QuorumStateFile(fs, "/meta", cluster_id="c1", node_id=2)
    assert store.read() == ElectionState(epoch=0)
    store.write(ElectionState(epoch=3, voted_id=1))
    store.write(ElectionState(epoch=4, voted_id=2, leader_id=2))
    fs.crash(random.Random(1))
    assert store.read() == ElectionState(epoch=4, voted_id=2, leader_id=2)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"data_version": 0}',
        b'{"data_version": 0, "cluster_id": "c1", "node_id": 2, '
        b'"leader_epoch": "4", "voted_id": -1, "leader_id": -1}',
    ],
)
def test_a_corrupt_file_refuses_to_start(tmp_path, content: bytes) -> None:
    fs = OsFileSystem()
    store = QuorumStateFile(fs, str(tmp_path), cluster_id="c1", node_id=2)
    write_atomically(fs, store.path, content)
    with pytest.raises(QuorumStateError, match=r"refusing to start|corrupt"):
        store.read()


def test_a_file_from_another_node_or_cluster_is_refused(tmp_path) -> None:
    fs = OsFileSystem()
    QuorumStateFile(fs, str(tmp_path), cluster_id="c1", node_id=2).write(ElectionState(epoch=1))
    with pytest.raises(QuorumStateError, match="belongs to node 2"):
        QuorumStateFile(fs, str(tmp_path), cluster_id="c1", node_id=3).read()
    with pytest.raises(QuorumStateError, match="cluster 'c1'"):
        QuorumStateFile(fs, str(tmp_path), cluster_id="c2", node_id=2).read()
