"""ElectLeaders' decisions on the controller's image: preferred and unclean, per partition."""

from __future__ import annotations

from client.protocol.errors import ErrorCode
from kraft.controller.elections import (
    ELIGIBLE_LEADERS_NOT_AVAILABLE,
    ElectLeadersRequest,
    PartitionElection,
    elect_leaders,
)
from kraft.metadata.image import MetadataImage, replay
from kraft.metadata.records import NO_LEADER, BrokerRegistrationChangeRecord, PartitionChangeRecord
from tests.kraft.test_replication_control import apply, fence, one_partition


def codes(result) -> list[tuple[str, int, int]]:
    return [(o.topic, o.partition, o.error_code) for o in result.response]


def unfence(image: MetadataImage, broker_id: int) -> MetadataImage:
    epoch = image.brokers[broker_id].broker_epoch
    change = BrokerRegistrationChangeRecord(broker_id=broker_id, broker_epoch=epoch, fenced=False)
    return replay(image, [(image.offset + 1, change)])


def named(*partitions: tuple[str, int], unclean: bool = False) -> ElectLeadersRequest:
    return ElectLeadersRequest(
        partitions=tuple(PartitionElection(topic=t, partition=p) for t, p in partitions),
        unclean=unclean,
    )


def test_preferred_election_per_partition() -> None:
    image, topic_id = one_partition()
    preferred = image.topics[topic_id].partitions[0].replicas[0]
    assert image.topics[topic_id].partitions[0].leader == preferred
    result = elect_leaders(image, named(("t", 0), ("t", 5), ("absent", 0)))
    assert result.records == ()
    assert codes(result) == [
        ("t", 0, ErrorCode.ELECTION_NOT_NEEDED),
        ("t", 5, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
        ("absent", 0, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
    ]
    # Every partition asked for: the ones needing no election are left out.
    assert elect_leaders(image, ElectLeadersRequest()).response == ()

    # Fenced, the preferred replica leaves the ISR; back, it is live but not in sync.
    image = unfence(fence(image, preferred), preferred)
    assert preferred not in image.topics[topic_id].partitions[0].isr
    result = elect_leaders(image, named(("t", 0)))
    assert codes(result) == [("t", 0, ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE)]

    # In the ISR again but not leading: elected, once even when named twice.
    part = image.topics[topic_id].partitions[0]
    rejoin = PartitionChangeRecord(topic_id=topic_id, partition=0, isr=(*part.isr, preferred))
    image = replay(image, [(image.offset + 1, rejoin)])
    result = elect_leaders(image, named(("t", 0), ("t", 0)))
    assert codes(result) == [("t", 0, ErrorCode.NONE), ("t", 0, ErrorCode.NONE)]
    assert len(result.records) == 1
    image = apply(image, result)
    assert image.topics[topic_id].partitions[0].leader == preferred
    assert codes(elect_leaders(image, named(("t", 0)))) == [("t", 0, ErrorCode.ELECTION_NOT_NEEDED)]


def test_unclean_election_only_for_a_partition_without_a_live_isr() -> None:
    image, topic_id = one_partition()
    result = elect_leaders(image, named(("t", 0), unclean=True))
    assert codes(result) == [("t", 0, ErrorCode.ELECTION_NOT_NEEDED)]  # it has a leader
    replicas = image.topics[topic_id].partitions[0].replicas
    for broker in replicas:
        image = fence(image, broker)
    part = image.topics[topic_id].partitions[0]
    assert part.leader == NO_LEADER and part.isr == (replicas[-1],)
    result = elect_leaders(image, named(("t", 0), unclean=True))
    assert codes(result) == [("t", 0, ELIGIBLE_LEADERS_NOT_AVAILABLE)]
    # A replica outside the ISR comes back: the unclean election makes it the whole ISR.
    image = unfence(image, replicas[0])
    assert codes(elect_leaders(image, named(("t", 0)))) == [
        ("t", 0, ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE)
    ]
    result = elect_leaders(image, named(("t", 0), unclean=True))
    assert codes(result) == [("t", 0, ErrorCode.NONE)]
    image = apply(image, result)
    part = image.topics[topic_id].partitions[0]
    assert (part.leader, part.isr) == (replicas[0], (replicas[0],))


def test_unclean_election_prefers_a_live_isr_member() -> None:
    image, topic_id = one_partition()
    replicas = image.topics[topic_id].partitions[0].replicas
    for broker in replicas:
        image = fence(image, broker)
    last = replicas[-1]
    # The ISR's last member and a replica outside it are both back: the ISR member leads.
    image = unfence(unfence(image, replicas[0]), last)
    assert image.topics[topic_id].partitions[0].leader == NO_LEADER  # records elect, not this
    image = apply(image, elect_leaders(image, named(("t", 0), unclean=True)))
    part = image.topics[topic_id].partitions[0]
    assert (part.leader, part.isr) == (last, (last,))
