"""`pykraft`: topics, produce, consume, quorum and cluster from the command line.

    pykraft topic create orders --partitions 6 --replication-factor 3
    printf 'k1:hello\\nk2:world\\n' | pykraft produce orders --key-separator :
    pykraft consume orders --from-beginning --max-messages 2 --format '{partition} {offset} {key} {value}'
    pykraft quorum describe --replication
    pykraft group describe billing
    pykraft group reset-offsets billing --topic orders --to-earliest --execute
    pykraft transactions list
    pykraft transactions describe payments-writer
    pykraft producers orders 0
    pykraft metadata-shell

Every command takes `--bootstrap host:port,...` (default: the embedded server,
127.0.0.1:9092). Errors print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import trio

from client.admin import Admin, NewTopic
from client.cluster import DEFAULT_BOOTSTRAP
from client.consumer import Consumer
from client.producer import Producer
from client.protocol.errors import KafkaError

EXIT_ERROR = 1
EXIT_USAGE = 2


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{what} {item!r} is not key=value")
        out[key] = value
    return out


# ---------------------------------------------------------------------- topics


async def topic_create(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        topic = NewTopic(
            args.name, args.partitions, args.replication_factor, _pairs(args.config, "config")
        )
        outcome = (await admin.create_topics([topic]))[0]
        print(f"created topic {args.name} ({outcome['topic_id']})", file=out)


async def topic_list(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        for name in await admin.list_topics():
            print(name, file=out)


async def topic_describe(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        for topic in await admin.describe_topics([args.name] if args.name else None):
            print(
                f"Topic: {topic.name}\tTopicId: {topic.topic_id}\t"
                f"PartitionCount: {len(topic.partitions)}\t"
                f"ReplicationFactor: {len(topic.partitions[0].replicas) if topic.partitions else 0}",
                file=out,
            )
            for p in topic.partitions:
                print(
                    f"\tPartition: {p.partition}\tLeader: {p.leader}\tLeaderEpoch: {p.leader_epoch}"
                    f"\tReplicas: {','.join(map(str, p.replicas))}\tIsr: {','.join(map(str, p.isr))}",
                    file=out,
                )


async def topic_delete(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        await admin.delete_topics([args.name])
        print(f"deleted topic {args.name}", file=out)


async def topic_alter(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        if args.partitions:
            await admin.create_partitions({args.name: args.partitions})
        if args.set or args.delete:
            await admin.alter_configs(args.name, _pairs(args.set, "setting"), args.delete or ())
        print(f"altered topic {args.name}", file=out)


# ---------------------------------------------------------------------- data


async def produce(args: argparse.Namespace, out: TextIO) -> None:
    count = 0
    async with Producer(args.bootstrap, acks=args.acks, linger_ms=args.linger_ms) as producer:
        deliveries = []
        for line in sys.stdin:
            line = line.rstrip("\n")
            key = None
            if args.key_separator:
                key_text, sep, line = line.partition(args.key_separator)
                if not sep:
                    raise ValueError(
                        f"line {count + 1} has no key separator {args.key_separator!r}"
                    )
                key = key_text.encode()
            deliveries.append(
                await producer.send(args.topic, line.encode(), key=key, partition=args.partition)
            )
            count += 1
        await producer.flush()
        for delivery in deliveries:
            await delivery  # raises the first failure
    print(f"produced {count} records to {args.topic}", file=sys.stderr)


async def consume(args: argparse.Namespace, out: TextIO) -> None:
    reset = "earliest" if args.from_beginning else "latest"
    async with Consumer(args.bootstrap, auto_offset_reset=reset) as consumer:
        count = await consumer.cluster.partition_count(args.topic)
        partitions = [args.partition] if args.partition is not None else list(range(count))
        consumer.assign([(args.topic, p) for p in partitions])
        if args.offset is not None:
            for p in partitions:
                consumer.seek((args.topic, p), args.offset)
        seen = 0
        idle_until = time.monotonic() + args.timeout_ms / 1000
        while args.max_messages is None or seen < args.max_messages:
            records = await consumer.poll(timeout_s=0.5)
            if records:
                idle_until = time.monotonic() + args.timeout_ms / 1000
            elif not args.follow and time.monotonic() > idle_until:
                break
            for record in records:
                if args.max_messages is not None and seen >= args.max_messages:
                    break
                print(
                    args.format.format(
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        timestamp=record.timestamp,
                        key=(record.key or b"").decode(errors="replace"),
                        value=(record.value or b"").decode(errors="replace"),
                    ),
                    file=out,
                    flush=True,
                )
                seen += 1


async def offsets(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        earliest = await admin.list_offsets(args.topic, -2)
        latest = await admin.list_offsets(args.topic, -1)
        for partition in sorted(latest):
            print(
                f"{args.topic}\t{partition}\tearliest={earliest[partition]}\tlatest={latest[partition]}",
                file=out,
            )


# ---------------------------------------------------------------------- groups


async def group_list(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        groups = await admin.list_groups()
    print(f"{'GROUP':<30} {'STATE':<20} PROTOCOL-TYPE", file=out)
    for group in groups:
        print(f"{group.group_id:<30} {group.state or '-':<20} {group.protocol_type}", file=out)


async def group_describe(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        (group,) = await admin.describe_groups([args.group])
        committed = await admin.list_group_offsets(args.group)
        owner = {tp: m for m in group.members for tp in m.assignment}
        partitions = sorted(set(committed) | set(owner))
        log_end: dict[tuple[str, int], int] = {}
        for topic in sorted({t for t, _ in partitions}):
            for partition, offset in (await admin.list_offsets(topic, -1)).items():
                log_end[(topic, partition)] = offset
    print(
        f"group {group.group_id}: state {group.state}, protocol {group.protocol or '-'}, "
        f"{len(group.members)} member(s)",
        file=out,
    )
    if group.members:
        print(f"\n{'MEMBER-ID':<50} {'CLIENT-ID':<20} {'HOST':<16} ASSIGNMENT", file=out)
        for m in sorted(group.members, key=lambda m: m.member_id):
            assigned = ",".join(f"{t}-{p}" for t, p in m.assignment) or "-"
            print(f"{m.member_id:<50} {m.client_id:<20} {m.host:<16} {assigned}", file=out)
    print(
        f"\n{'TOPIC':<20} {'PARTITION':>9} {'CURRENT-OFFSET':>14} {'LOG-END-OFFSET':>14} "
        f"{'LAG':>6}  CONSUMER-ID",
        file=out,
    )
    for tp in partitions:
        current = committed.get(tp)
        end = log_end.get(tp)
        lag = "-" if current is None or end is None else str(max(0, end - current))
        member = owner.get(tp)
        print(
            f"{tp[0]:<20} {tp[1]:>9} {'-' if current is None else current:>14} "
            f"{'-' if end is None else end:>14} {lag:>6}  {member.member_id if member else '-'}",
            file=out,
        )


def _timestamp_ms(text: str) -> int:
    """An ISO 8601 date-time (no zone: UTC) in Unix milliseconds."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--to-datetime {text!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000)


async def group_reset_offsets(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        (group,) = await admin.describe_groups([args.group])
        if group.members or group.state not in ("Empty", "Dead"):
            raise ValueError(
                f"offsets of group {args.group!r} can be reset only while it has no members; "
                f"it is {group.state} with {len(group.members)}"
            )
        earliest = await admin.list_offsets(args.topic, -2)
        latest = await admin.list_offsets(args.topic, -1)
        if args.to_earliest:
            plan = earliest
        elif args.to_latest:
            plan = latest
        elif args.to_offset is not None:
            # Kafka's tool keeps a wanted offset inside the log.
            plan = {p: min(max(args.to_offset, earliest[p]), latest[p]) for p in latest}
        else:
            by_time = await admin.list_offsets(args.topic, _timestamp_ms(args.to_datetime))
            plan = {p: (o if o >= 0 else latest[p]) for p, o in by_time.items()}
        if args.execute:
            await admin.alter_group_offsets(
                args.group, {(args.topic, p): o for p, o in plan.items()}
            )
    print(f"{'GROUP':<30} {'TOPIC':<20} {'PARTITION':>9} {'NEW-OFFSET':>10}", file=out)
    for partition, offset in sorted(plan.items()):
        print(f"{args.group:<30} {args.topic:<20} {partition:>9} {offset:>10}", file=out)
    if not args.execute:
        print("(dry run: nothing was changed; --execute applies it)", file=out)


async def group_delete(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        await admin.delete_groups([args.group])
    print(f"deleted group {args.group}", file=out)


# ---------------------------------------------------------------------- cluster


async def transactions_list(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        listed = await admin.list_transactions()
    print(f"{'TRANSACTIONAL-ID':<30} {'PRODUCER-ID':>12} STATE", file=out)
    for item in listed:
        print(f"{item.transactional_id:<30} {item.producer_id:>12} {item.state}", file=out)


async def transactions_describe(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        (txn,) = await admin.describe_transactions([args.transactional_id])
    started = "-" if txn.start_time_ms < 0 else _iso(txn.start_time_ms)
    partitions = ",".join(f"{t}-{p}" for t, p in txn.partitions) or "-"
    print(
        f"TransactionalId: {txn.transactional_id}\tCoordinator: {txn.coordinator_id}\t"
        f"State: {txn.state}\tProducerId: {txn.producer_id}\tProducerEpoch: "
        f"{txn.producer_epoch}\tTimeoutMs: {txn.timeout_ms}\tStarted: {started}\t"
        f"Partitions: {partitions}",
        file=out,
    )


async def producers(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        found = await admin.describe_producers(args.topic, args.partition)
    print(
        f"{'PRODUCER-ID':>12} {'EPOCH':>6} {'LAST-SEQUENCE':>14} {'COORDINATOR-EPOCH':>18} "
        f"{'TXN-START-OFFSET':>17} LAST-TIMESTAMP",
        file=out,
    )
    for p in found:
        start = "-" if p.current_txn_start_offset < 0 else str(p.current_txn_start_offset)
        stamp = "-" if p.last_timestamp < 0 else _iso(p.last_timestamp)
        print(
            f"{p.producer_id:>12} {p.epoch:>6} {p.last_sequence:>14} {p.coordinator_epoch:>18} "
            f"{start:>17} {stamp}",
            file=out,
        )


def _iso(epoch_ms: int) -> str:
    return datetime.datetime.fromtimestamp(epoch_ms / 1000, datetime.UTC).isoformat(
        timespec="milliseconds"
    )


async def cluster_describe(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        cluster = await admin.describe_cluster()
        print(f"ClusterId: {cluster.cluster_id}\tController: {cluster.controller_id}", file=out)
        for b in cluster.brokers:
            state = "fenced" if b.fenced else "unfenced"
            # Kafka's DescribeCluster carries no broker epoch: "-" when the broker did not say.
            epoch = b.broker_epoch if b.broker_epoch >= 0 else "-"
            print(
                f"\tBroker: {b.broker_id}\t{b.host}:{b.port}\tRack: {b.rack or '-'}"
                f"\tEpoch: {epoch}\t{state}",
                file=out,
            )


async def quorum_describe(args: argparse.Namespace, out: TextIO) -> None:
    async with Admin(args.bootstrap) as admin:
        quorum = await admin.describe_quorum()
        if args.replication:
            print(
                "NodeId\tLogEndOffset\tLag\tLastFetchTimeMsAgo\tLastCaughtUpTimeMsAgo\tStatus",
                file=out,
            )
            for status, replicas in (("Voter", quorum.voters), ("Observer", quorum.observers)):
                for r in replicas:
                    role = "Leader" if r.replica_id == quorum.leader_id else status
                    print(
                        f"{r.replica_id}\t{r.log_end_offset}\t{r.lag}\t{r.last_fetch_ms_ago}"
                        f"\t{r.last_caught_up_ms_ago}\t{role}",
                        file=out,
                    )
            return
        max_lag = max((r.lag for r in quorum.voters), default=0)
        print(f"LeaderId:\t\t{quorum.leader_id}", file=out)
        print(f"LeaderEpoch:\t\t{quorum.leader_epoch}", file=out)
        print(f"HighWatermark:\t\t{quorum.high_watermark}", file=out)
        print(f"MaxFollowerLag:\t\t{max_lag}", file=out)
        print(f"CurrentVoters:\t\t{[r.replica_id for r in quorum.voters]}", file=out)
        print(f"CurrentObservers:\t{[r.replica_id for r in quorum.observers]}", file=out)


async def metadata_shell(args: argparse.Namespace, out: TextIO) -> None:
    """Browse the cluster as a tree: /brokers/<id>, /topics/<name>/<partition>."""
    async with Admin(args.bootstrap) as admin:
        cluster = await admin.describe_cluster()
        topics = await admin.describe_topics()
        tree: dict[str, Any] = {
            "cluster": {"id": cluster.cluster_id, "controller": cluster.controller_id},
            "brokers": {
                str(b.broker_id): {
                    "address": f"{b.host}:{b.port}",
                    "epoch": b.broker_epoch,
                    "fenced": b.fenced,
                    "rack": b.rack,
                }
                for b in cluster.brokers
            },
            "topics": {
                t.name: {
                    "id": t.topic_id,
                    **{
                        str(p.partition): {
                            "leader": p.leader,
                            "leader_epoch": p.leader_epoch,
                            "replicas": list(p.replicas),
                            "isr": list(p.isr),
                        }
                        for p in t.partitions
                    },
                }
                for t in topics
            },
        }
    commands = [args.command] if args.command else None
    shell = MetadataShell(tree, out)
    if commands:
        for command in commands:
            shell.run(command)
        return
    print("metadata shell: ls, cd PATH, cat PATH, tree, pwd, exit", file=out)
    while True:
        print(f"pykraft:{shell.cwd}> ", end="", file=out, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("exit", "quit"):
            return
        shell.run(line)


class MetadataShell:
    def __init__(self, tree: dict[str, Any], out: TextIO) -> None:
        self.tree = tree
        self.out = out
        self.cwd = "/"

    def _resolve(self, path: str) -> tuple[str, Any]:
        parts = [] if path.startswith("/") else [p for p in self.cwd.split("/") if p]
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                parts = parts[:-1]
            else:
                parts.append(part)
        node: Any = self.tree
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"no such path: /{'/'.join(parts)}")
            node = node[part]
        return "/" + "/".join(parts), node

    def run(self, line: str) -> None:
        words = shlex.split(line)
        if not words:
            return
        command, rest = words[0], words[1:]
        try:
            path, node = self._resolve(rest[0] if rest else ".")
            if command == "ls":
                print(
                    "\n".join(node) if isinstance(node, dict) else json.dumps(node), file=self.out
                )
            elif command == "cd":
                if not isinstance(node, dict):
                    raise ValueError(f"{path} is not a directory")
                self.cwd = path
            elif command in ("cat", "tree"):
                print(json.dumps(node, indent=2, sort_keys=True), file=self.out)
            elif command == "pwd":
                print(self.cwd, file=self.out)
            else:
                print(f"unknown command {command!r}", file=self.out)
        except ValueError as error:
            print(error, file=self.out)


# ---------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pykraft", description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP, help="host:port,...")
    commands = parser.add_subparsers(dest="command", required=True)

    topic = commands.add_parser("topic", help="create, list, describe, delete, alter topics")
    topics = topic.add_subparsers(dest="action", required=True)
    create = topics.add_parser("create")
    create.add_argument("name")
    create.add_argument("--partitions", type=int, default=1)
    create.add_argument("--replication-factor", type=int, default=1)
    create.add_argument("--config", action="append", help="key=value")
    create.set_defaults(run=topic_create)
    topics.add_parser("list").set_defaults(run=topic_list)
    describe = topics.add_parser("describe")
    describe.add_argument("name", nargs="?")
    describe.set_defaults(run=topic_describe)
    delete = topics.add_parser("delete")
    delete.add_argument("name")
    delete.set_defaults(run=topic_delete)
    alter = topics.add_parser("alter")
    alter.add_argument("name")
    alter.add_argument("--partitions", type=int, help="new total")
    alter.add_argument("--set", action="append", help="key=value")
    alter.add_argument("--delete", action="append", help="config key to remove")
    alter.set_defaults(run=topic_alter)

    prod = commands.add_parser("produce", help="send stdin's lines as records")
    prod.add_argument("topic")
    prod.add_argument("--key-separator")
    prod.add_argument("--acks", default="all", choices=["all", "1", "0"])
    prod.add_argument("--partition", type=int)
    prod.add_argument("--linger-ms", type=int, default=5)
    prod.set_defaults(run=produce)

    cons = commands.add_parser("consume", help="print records")
    cons.add_argument("topic")
    cons.add_argument("--from-beginning", action="store_true")
    cons.add_argument("--offset", type=int)
    cons.add_argument("--partition", type=int)
    cons.add_argument("--follow", action="store_true", help="keep waiting for new records")
    cons.add_argument("--max-messages", type=int)
    cons.add_argument("--timeout-ms", type=int, default=2000, help="stop after this long idle")
    cons.add_argument(
        "--format",
        default="{value}",
        help="with {topic} {partition} {offset} {timestamp} {key} {value}",
    )
    cons.set_defaults(run=consume)

    offs = commands.add_parser("offsets", help="earliest and latest offset per partition")
    offs.add_argument("topic")
    offs.set_defaults(run=offsets)

    group = commands.add_parser("group", help="consumer groups: list, describe, reset, delete")
    groups = group.add_subparsers(dest="action", required=True)
    groups.add_parser("list").set_defaults(run=group_list)
    group_describe_parser = groups.add_parser("describe")
    group_describe_parser.add_argument("group")
    group_describe_parser.set_defaults(run=group_describe)
    reset = groups.add_parser("reset-offsets", help="a dry run unless --execute")
    reset.add_argument("group")
    reset.add_argument("--topic", required=True)
    to = reset.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true")
    to.add_argument("--to-latest", action="store_true")
    to.add_argument("--to-offset", type=int)
    to.add_argument("--to-datetime", help="ISO 8601, e.g. 2026-12-01T18:00:00 (UTC if no zone)")
    reset.add_argument("--execute", action="store_true")
    reset.set_defaults(run=group_reset_offsets)
    group_delete_parser = groups.add_parser("delete")
    group_delete_parser.add_argument("group")
    group_delete_parser.set_defaults(run=group_delete)

    txns = commands.add_parser("transactions", help="transactional ids: list, describe")
    txn_actions = txns.add_subparsers(dest="action", required=True)
    txn_actions.add_parser("list").set_defaults(run=transactions_list)
    txn_describe_parser = txn_actions.add_parser("describe")
    txn_describe_parser.add_argument("transactional_id")
    txn_describe_parser.set_defaults(run=transactions_describe)

    prods = commands.add_parser("producers", help="a partition's active producers")
    prods.add_argument("topic")
    prods.add_argument("partition", type=int)
    prods.set_defaults(run=producers)

    quorum = commands.add_parser("quorum", help="the metadata quorum")
    quorum_actions = quorum.add_subparsers(dest="action", required=True)
    quorum_describe_parser = quorum_actions.add_parser("describe")
    quorum_describe_parser.add_argument("--replication", action="store_true")
    quorum_describe_parser.set_defaults(run=quorum_describe)

    cluster = commands.add_parser("cluster", help="brokers and the controller")
    cluster.add_subparsers(dest="action", required=True).add_parser("describe").set_defaults(
        run=cluster_describe
    )

    shell = commands.add_parser("metadata-shell", help="browse the metadata as a tree")
    shell.add_argument("-c", "--command", help="run one command and exit")
    shell.set_defaults(run=metadata_shell)

    dump = commands.add_parser("dump-log", help="print a log directory or segment file")
    dump.add_argument("path")
    dump.add_argument("--records", action="store_true")
    dump.set_defaults(run=None)
    return parser


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = _parser().parse_args(argv)
    stream = out or sys.stdout
    if args.command == "dump-log":
        from storage.dump import main as dump_main

        return dump_main([args.path, *(["--records"] if args.records else [])])
    run: Callable[[argparse.Namespace, TextIO], Awaitable[None]] = args.run
    try:
        trio.run(run, args, stream)
    except KafkaError as error:
        print(f"pykraft: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, OSError) as error:
        print(f"pykraft: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
