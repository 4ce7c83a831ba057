"""Topic and broker configs: validation and IncrementalAlterConfigs (Kafka's ConfigurationControlManager).

Only settings pykraft acts on are accepted; anything else is INVALID_CONFIG, so a
typo never sits silently in the metadata log. Values are validated here, once, by
the controller; everyone else trusts what is committed.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from client.protocol.errors import ErrorCode
from kraft.controller.configs_schema import BROKER, TOPIC, check_config, described
from kraft.controller.result import ControllerResult
from kraft.metadata.image import MetadataImage
from kraft.metadata.records import ConfigRecord, MetadataRecord

# Kafka's AlterConfigOp.OpType numbering.
OP_SET = 0
OP_DELETE = 1
OP_APPEND = 2
OP_SUBTRACT = 3


@attrs.frozen(kw_only=True)
class AlterConfigOp:
    name: str
    op: int
    value: str | None = None


@attrs.frozen(kw_only=True)
class AlterConfigsResource:
    resource_type: str
    resource_name: str
    ops: tuple[AlterConfigOp, ...]


@attrs.frozen(kw_only=True)
class AlterConfigsOutcome:
    resource_type: str
    resource_name: str
    error_code: int
    message: str = ""


def incremental_alter_configs(
    image: MetadataImage, resources: Sequence[AlterConfigsResource], *, validate_only: bool = False
) -> ControllerResult:
    """Each resource is changed whole or not at all; one bad op refuses its resource."""
    records: list[MetadataRecord] = []
    outcomes = []
    for resource in resources:
        resource = _list_ops_as_sets(image, resource)
        problem = _check_resource(image, resource)
        if problem is not None:
            outcomes.append(
                AlterConfigsOutcome(
                    resource_type=resource.resource_type,
                    resource_name=resource.resource_name,
                    error_code=problem[0],
                    message=problem[1],
                )
            )
            continue
        if not validate_only:
            records += [
                ConfigRecord(
                    resource_type=resource.resource_type,
                    resource_name=resource.resource_name,
                    name=op.name,
                    value=op.value if op.op == OP_SET else None,
                )
                for op in resource.ops
            ]
        outcomes.append(
            AlterConfigsOutcome(
                resource_type=resource.resource_type,
                resource_name=resource.resource_name,
                error_code=ErrorCode.NONE,
            )
        )
    return ControllerResult(records=tuple(records), response=tuple(outcomes))


def _list_ops_as_sets(image: MetadataImage, resource: AlterConfigsResource) -> AlterConfigsResource:
    """APPEND and SUBTRACT of a list-typed config (Kafka's: `cleanup.policy`) as the SET
    of the list they make from the current value (or the default); left as they are
    on any other config, for `_check_resource` to refuse."""
    current = image.configs.get((resource.resource_type, resource.resource_name), {})
    ops = []
    for op in resource.ops:
        kind = described(resource.resource_type, dict(current), (op.name,))
        if op.op in (OP_APPEND, OP_SUBTRACT) and op.value is not None and kind:
            (_, value, _, type_name) = kind[0]
            if type_name == "list":
                items = [item.strip() for item in value.split(",") if item.strip()]
                given = [item.strip() for item in op.value.split(",") if item.strip()]
                if op.op == OP_APPEND:
                    items += [item for item in given if item not in items]
                else:
                    items = [item for item in items if item not in given]
                op = AlterConfigOp(name=op.name, op=OP_SET, value=",".join(items))
        ops.append(op)
    return attrs.evolve(resource, ops=tuple(ops))


def replacing(image: MetadataImage, resource: AlterConfigsResource) -> AlterConfigsResource:
    """Kafka's legacy AlterConfigs on `resource`: the configs it names become the
    resource's whole dynamic set, so every other one set now is deleted."""
    named = {op.name for op in resource.ops}
    current = image.configs.get((resource.resource_type, resource.resource_name), {})
    deletes = tuple(
        AlterConfigOp(name=name, op=OP_DELETE) for name in sorted(current) if name not in named
    )
    return attrs.evolve(resource, ops=resource.ops + deletes)


def _check_resource(image: MetadataImage, resource: AlterConfigsResource) -> tuple[int, str] | None:
    if resource.resource_type == TOPIC:
        if image.topic(resource.resource_name) is None:
            return ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"no topic {resource.resource_name}"
    elif resource.resource_type == BROKER:
        if resource.resource_name != "" and (
            not resource.resource_name.isdigit() or int(resource.resource_name) not in image.brokers
        ):
            return ErrorCode.INVALID_REQUEST, f"no broker {resource.resource_name}"
    else:
        return ErrorCode.INVALID_REQUEST, f"unknown resource type {resource.resource_type!r}"
    seen: set[str] = set()
    for op in resource.ops:
        if op.name in seen:
            return ErrorCode.INVALID_REQUEST, f"config {op.name} is altered twice"
        seen.add(op.name)
        if op.op not in (OP_SET, OP_DELETE):
            # What is left of the list operations names a config that is not a list.
            return ErrorCode.INVALID_CONFIG, f"{op.name} is not a list config (op {op.op})"
        if op.op == OP_SET and op.value is None:
            return ErrorCode.INVALID_CONFIG, f"SET of {op.name} needs a value"
        problem = check_config(
            resource.resource_type, op.name, op.value if op.op == OP_SET else None
        )
        if problem is not None:
            return ErrorCode.INVALID_CONFIG, problem
    return None
