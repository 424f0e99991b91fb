"""Topic layout checks and creation: the state topic must be compacted and co-partitioned, and the
worker allowed (ACLs) to read and write what it needs."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AclOperation, AdminClient, ConfigResource, NewTopic

from worker.errors import AccessError, TopicError
from worker.kafka.access import ACL_HINT, require_topic_operations

log = logging.getLogger(__name__)
_TIMEOUT_S = 30.0
_AUTHORIZATION_FAILED = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED)


def partition_count(admin: AdminClient, topic: str) -> int | None:
    """Partitions of a topic, None when it does not exist."""
    try:
        metadata = admin.list_topics(topic=topic, timeout=_TIMEOUT_S)
    except KafkaException as exc:
        raise TopicError(
            f"cannot reach Kafka to describe topic {topic!r} within {_TIMEOUT_S:.0f} s: {exc.args[0].str()}; "
            "check --bootstrap-servers and the -X security settings"
        ) from exc
    info = metadata.topics.get(topic)
    if info is None or (info.error is not None and info.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
        return None
    if info.error is not None and info.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        raise AccessError(f"not authorized to DESCRIBE topic {topic!r} (the broker's ACLs); {ACL_HINT}")
    if info.error is not None:
        raise TopicError(f"cannot describe topic {topic!r}: {info.error}")
    return len(info.partitions)


def create_topic(admin: AdminClient, topic: str, partitions: int, config: dict[str, str] | None = None) -> None:
    """Create a topic; one created meanwhile by another worker is fine."""
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, config=config or {})])
    try:
        futures[topic].result(timeout=_TIMEOUT_S)
        log.info("created topic=%s partitions=%d config=%s", topic, partitions, config or {})
    except KafkaException as exc:
        if exc.args[0].code() in _AUTHORIZATION_FAILED:
            raise AccessError(
                f"not authorized to CREATE topic {topic!r} ({exc.args[0].str()}): grant CREATE on it (or on the "
                f"cluster), or create it beforehand with {partitions} partitions and config {config or {}}; {ACL_HINT}"
            ) from exc
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise TopicError(f"cannot create topic {topic!r}: {exc.args[0].str()}") from exc
    deadline = time.monotonic() + _TIMEOUT_S
    while partition_count(admin, topic) is None:  # metadata reaches brokers a moment after creation
        if time.monotonic() > deadline:
            raise TopicError(f"topic {topic!r} was created but is not visible after {_TIMEOUT_S:.0f} s")
        time.sleep(0.1)


def _cleanup_policy(admin: AdminClient, topic: str) -> str:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=_TIMEOUT_S)
    return str(configs["cleanup.policy"].value)


def ensure_worker_topics(
    admin: AdminClient, *, input_topic: str, output_topic: str, state_topic: str, dlq_topic: str
) -> int:
    """Check the input, create what is missing, refuse a state topic that is not co-partitioned.

    Returns the input's partition count.
    """
    partitions = partition_count(admin, input_topic)
    if partitions is None:
        raise TopicError(
            f"input topic {input_topic!r} does not exist; create it (its partition count is the "
            "group's parallelism), e.g. with `lstm-worker produce --partitions N`"
        )
    for topic, config in ((output_topic, None), (dlq_topic, None), (state_topic, {"cleanup.policy": "compact"})):
        if partition_count(admin, topic) is None:
            create_topic(admin, topic, partitions, config)
    # a missing ACL stops the worker here, not at its first write or commit
    require_topic_operations(
        admin,
        {
            input_topic: ("input topic", (AclOperation.READ,)),
            output_topic: ("output topic", (AclOperation.WRITE,)),
            dlq_topic: ("dead-letter topic", (AclOperation.WRITE,)),
            state_topic: ("state topic", (AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE_CONFIGS)),
        },
    )
    state_partitions = partition_count(admin, state_topic)
    if state_partitions != partitions:
        raise TopicError(
            f"state topic {state_topic!r} has {state_partitions} partitions but input topic "
            f"{input_topic!r} has {partitions}; they must be co-partitioned (equal counts). "
            "Use another --state-topic, or delete it so the worker recreates it"
        )
    policy = _cleanup_policy(admin, state_topic)
    if "compact" not in policy:
        raise TopicError(
            f"state topic {state_topic!r} has cleanup.policy={policy}; it must be 'compact', "
            "or old states would be deleted. Set it with kafka-configs --alter --add-config cleanup.policy=compact"
        )
    return partitions
