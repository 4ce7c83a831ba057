"""`quorum-state`: the election state a voter must never forget (epoch, vote, leader).

Written atomically (temp file, fsync, rename, fsync directory) before the runtime
sends anything that depends on it. The layout is JSON, like Kafka's file of the same
name, plus the cluster and node id so that a data directory moved to the wrong node or
cluster is refused. A file that exists but cannot be read is a hard error: starting
with an empty state would let the node vote twice in an epoch. So is one that names a
state no member of this quorum can act on (a leader or a vote that is not a voter, an
epoch past the last one, issue 14): it says so in one line, naming the file, and is
left as found. Nothing of the kind is ever written (asserted before each write).
"""

from __future__ import annotations

import json
import posixpath

from kraft.raft.state import ElectionState
from storage.checkpoint import read_file, write_atomically
from storage.fs import FileSystem

FILE_NAME = "quorum-state"
DATA_VERSION = 0


class QuorumStateError(Exception):
    """The quorum-state file is unreadable or belongs to another node or cluster."""


class QuorumStateFile:
    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        *,
        cluster_id: str,
        node_id: int,
        voters: frozenset[int] | None = None,
    ) -> None:
        self.fs = fs
        self.path = posixpath.join(directory, FILE_NAME)
        self.cluster_id = cluster_id
        self.node_id = node_id
        # The quorum's voters, if known: a stored leader or vote must be one of them.
        self.voters = voters

    def read(self) -> ElectionState:
        """The stored state, or epoch 0 with no vote and no leader if there is no file."""
        content = read_file(self.fs, self.path)
        if content is None:
            return ElectionState(epoch=0)
        try:
            data = json.loads(content)
            if data["data_version"] != DATA_VERSION:
                raise QuorumStateError(
                    f"{self.path}: unsupported data_version {data['data_version']}"
                )
            state = ElectionState(
                epoch=_int(data, "leader_epoch"),
                voted_id=_int(data, "voted_id"),
                leader_id=_int(data, "leader_id"),
            )
            cluster_id, node_id = data["cluster_id"], _int(data, "node_id")
        except (ValueError, KeyError, TypeError) as error:
            raise QuorumStateError(
                f"{self.path} is corrupt ({error}); refusing to start rather than forget a vote. "
                "Restore it, or remove the node's metadata directory and let it rejoin as new."
            ) from None
        if cluster_id != self.cluster_id or node_id != self.node_id:
            raise QuorumStateError(
                f"{self.path} belongs to node {node_id} of cluster {cluster_id!r}, "
                f"not node {self.node_id} of cluster {self.cluster_id!r}"
            )
        if state.epoch < 0:
            raise QuorumStateError(f"{self.path}: negative epoch {state.epoch}")
        problem = state.problem(self.voters)
        if problem is not None:
            raise QuorumStateError(
                f"{self.path}: {problem}; no member of this quorum can act on it, so the node "
                "refuses to start. Restore the file, or remove the node's metadata directory "
                "and let it rejoin as new."
            )
        return state

    def write(self, state: ElectionState) -> None:
        problem = state.problem(self.voters)
        assert problem is None, f"{self.path}: refusing to write {state}: {problem}"
        content = {
            "data_version": DATA_VERSION,
            "cluster_id": self.cluster_id,
            "node_id": self.node_id,
            "leader_epoch": state.epoch,
            "voted_id": state.voted_id,
            "leader_id": state.leader_id,
        }
        write_atomically(self.fs, self.path, json.dumps(content, sort_keys=True).encode() + b"\n")


def _int(data: dict[str, object], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} is not an integer: {value!r}")
    return value
