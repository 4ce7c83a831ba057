"""`meta.properties`: which cluster and node a data directory belongs to (kafka-storage format).

A server refuses a directory that was never formatted, or that belongs to another
node or cluster: pointing a node at the wrong disk must not let it join a quorum
with somebody else's log.
"""

from __future__ import annotations

import os
import uuid

from storage.checkpoint import write_atomically
from storage.fs import OsFileSystem

FILE_NAME = "meta.properties"
VERSION = 1


class MetaPropertiesError(RuntimeError):
    pass


def new_cluster_id() -> str:
    return uuid.uuid4().hex[:22]


def format_directory(data_dir: str, *, cluster_id: str, node_id: int, force: bool = False) -> None:
    """Write meta.properties; an already formatted directory is left alone unless forced."""
    path = os.path.join(data_dir, FILE_NAME)
    if os.path.exists(path) and not force:
        raise MetaPropertiesError(f"{data_dir} is already formatted")
    fs = OsFileSystem()
    fs.makedirs(data_dir)
    text = f"version={VERSION}\ncluster.id={cluster_id}\nnode.id={node_id}\n"
    write_atomically(fs, path, text.encode())


def read(data_dir: str) -> dict[str, str]:
    path = os.path.join(data_dir, FILE_NAME)
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except FileNotFoundError:
        raise MetaPropertiesError(
            f"{data_dir} is not formatted: run `pykraft-server format` first"
        ) from None
    properties = {}
    for line in lines:
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            if not sep:
                raise MetaPropertiesError(f"{path}: bad line {line!r}")
            properties[key.strip()] = value.strip()
    return properties


def check(data_dir: str, node_id: int) -> str:
    """The cluster id of a directory formatted for `node_id`."""
    properties = read(data_dir)
    if properties.get("version") != str(VERSION) or "cluster.id" not in properties:
        raise MetaPropertiesError(f"{data_dir}/{FILE_NAME} is not a version {VERSION} file")
    if properties.get("node.id") != str(node_id):
        raise MetaPropertiesError(
            f"{data_dir} belongs to node {properties.get('node.id')}, not node {node_id}"
        )
    return properties["cluster.id"]
