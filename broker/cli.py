"""`pykraft-server`: run a node, format its storage, or run a local cluster.

    pykraft-server                         embedded default: one combined node on 127.0.0.1
    pykraft-server start --config node.toml
    pykraft-server format --config node.toml [--cluster-id ID]
    pykraft-server random-cluster-id
    pykraft-server cluster --controllers 3 --brokers 3   (or --nodes 3: combined)
    pykraft-server cluster restart N --root DIR          (a node of it that died)

SIGTERM or Ctrl-C stops a node gracefully (a broker's controlled shutdown, a
leader's resignation); a second one stops it at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import trio

from broker import meta_properties
from broker.config import (
    BROKER,
    BROKER_LISTENER,
    CONTROLLER,
    CONTROLLER_LISTENER,
    REPLICATION_LISTENER,
    ConfigError,
    NodeConfig,
    load,
)
from broker.server import Server
from kraft.metadata.image import MetadataReplayError
from kraft.metadata.records import MetadataRecordError
from kraft.quorum_state_file import QuorumStateError
from storage.checkpoint import CheckpointError
from storage.handles import raise_descriptor_limit
from storage.snapshot import SnapshotError

log = logging.getLogger("pykraft")

DEFAULT_DATA_DIR = "pykraft-data"
DEFAULT_BROKER_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093


# Errors that mean the data directory holds state this node cannot act on.
UNUSABLE_STATE = (
    QuorumStateError,
    CheckpointError,
    SnapshotError,
    MetadataRecordError,
    MetadataReplayError,
)


def embedded_default(data_dir: str, broker_port: int, controller_port: int) -> NodeConfig:
    return NodeConfig(
        node_id=1,
        roles=(CONTROLLER, BROKER),
        data_dir=data_dir,
        controller_quorum_voters={1: ("127.0.0.1", controller_port)},
        listeners={
            BROKER_LISTENER: ("127.0.0.1", broker_port),
            CONTROLLER_LISTENER: ("127.0.0.1", controller_port),
            # One node replicates to no one; any free port will do.
            REPLICATION_LISTENER: ("127.0.0.1", 0),
        },
    )


async def serve(config: NodeConfig, cluster_id: str) -> None:
    server = Server(config, cluster_id=cluster_id)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        nursery.start_soon(_stop_on_signals, server)
        if server.lifecycle is not None:
            # Like Kafka's broker, it is started once unfenced: able to host partitions.
            await server.lifecycle.unfenced.wait()
        # The line a supervisor (local_cluster, jepsen_like) waits for.
        print(f"pykraft node {config.node_id} ready", flush=True)
        await server.stopped.wait()
        nursery.cancel_scope.cancel()


async def _stop_on_signals(server: Server) -> None:
    node_id = server.config.node_id
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("node %d: %s: stopping", node_id, signal.Signals(signum).name)
            break
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.stop)
            async for _ in signals:
                log.warning("node %d: second signal: stopping now", node_id)
                server.kill()
                break


def _start(config: NodeConfig, *, format_if_new: bool) -> int:
    raise_descriptor_limit()
    if format_if_new and not os.path.exists(
        os.path.join(config.data_dir, meta_properties.FILE_NAME)
    ):
        cluster_id = meta_properties.new_cluster_id()
        meta_properties.format_directory(
            config.data_dir, cluster_id=cluster_id, node_id=config.node_id
        )
        log.info("formatted %s for cluster %s", config.data_dir, cluster_id)
    try:
        cluster_id = meta_properties.check(config.data_dir, config.node_id)
    except meta_properties.MetaPropertiesError as error:
        print(f"pykraft-server: {error}", file=sys.stderr)
        return 2
    if format_if_new:
        print(
            f"pykraft: one combined node; bootstrap servers 127.0.0.1:"
            f"{config.listeners[BROKER_LISTENER][1]}; data in {config.data_dir}; Ctrl-C stops",
            flush=True,
        )
    try:
        trio.run(serve, config, cluster_id)
    except UNUSABLE_STATE as error:
        # State on disk this node cannot act on: one line naming the file and why.
        print(f"pykraft-server: cannot start: {error}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        leaf = _first(group)
        if isinstance(leaf, UNUSABLE_STATE):
            print(f"pykraft-server: cannot start: {leaf}", file=sys.stderr)
            return 2
        if isinstance(leaf, OSError):
            print(f"pykraft-server: {leaf}", file=sys.stderr)
            return 1
        raise
    except OSError as error:
        print(f"pykraft-server: {error}", file=sys.stderr)
        return 1
    return 0


def _first(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pykraft-server", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="embedded default only")
    parser.add_argument("--port", type=int, default=DEFAULT_BROKER_PORT, help="embedded default")
    parser.add_argument("--controller-port", type=int, default=DEFAULT_CONTROLLER_PORT)
    commands = parser.add_subparsers(dest="command")
    start = commands.add_parser("start", help="run one node")
    start.add_argument("--config", required=True)
    fmt = commands.add_parser("format", help="write meta.properties into the data directory")
    fmt.add_argument("--config", required=True)
    fmt.add_argument("--cluster-id", default=None)
    fmt.add_argument("--ignore-formatted", action="store_true")
    commands.add_parser("random-cluster-id", help="print a new cluster id")
    cluster = commands.add_parser("cluster", help="run a local cluster of processes")
    cluster.add_argument(
        "action", nargs="?", choices=["restart"], help="restart: node N of the running cluster"
    )
    cluster.add_argument("node", nargs="?", type=int, help="the node to restart")
    cluster.add_argument("--controllers", type=int, default=0)
    cluster.add_argument("--brokers", type=int, default=0)
    cluster.add_argument("--nodes", type=int, default=0, help="combined controller+broker nodes")
    cluster.add_argument("--root", default="pykraft-cluster")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command is None:
            config = embedded_default(args.data_dir, args.port, args.controller_port)
            return _start(config, format_if_new=True)
        if args.command == "start":
            return _start(load(args.config), format_if_new=False)
        if args.command == "format":
            config = load(args.config)
            cluster_id = args.cluster_id or meta_properties.new_cluster_id()
            try:
                meta_properties.format_directory(
                    config.data_dir, cluster_id=cluster_id, node_id=config.node_id
                )
            except meta_properties.MetaPropertiesError as error:
                if not args.ignore_formatted:
                    print(f"pykraft-server: {error}", file=sys.stderr)
                    return 2
            print(f"formatted {config.data_dir}: cluster.id={cluster_id} node.id={config.node_id}")
            return 0
        if args.command == "random-cluster-id":
            print(meta_properties.new_cluster_id())
            return 0
        if args.command == "cluster":
            from broker.local_cluster import request_restart, run_until_stopped

            if args.action == "restart":
                if args.node is None:
                    parser.error("cluster restart needs a node id: cluster restart N --root DIR")
                return request_restart(args.root, args.node)
            if args.node is not None:
                parser.error(f"unexpected argument {args.node}")
            return run_until_stopped(
                args.root, controllers=args.controllers, brokers=args.brokers, combined=args.nodes
            )
    except ConfigError as error:
        print(f"pykraft-server: bad configuration: {error}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
