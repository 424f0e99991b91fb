"""Topic layout checks and creation: the state topic must be compacted and co-partitioned, and the
worker allowed (ACLs) to read and write what it needs.

Several workers may start at once: a topic another one creates meanwhile, or one that some
broker's metadata does not show yet (unknown, leaderless, partitions missing), is waited for
within a bound rather than refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclOperation,
    AdminClient,
    ClusterMetadata,
    ConfigResource,
    NewTopic,
    PartitionMetadata,
    TopicMetadata,
)

from worker.errors import AccessError, TopicError
from worker.kafka.access import ACL_HINT, require_topic_operations

log = logging.getLogger(__name__)
_TIMEOUT_S = 30.0
_POLL_S = 0.1
_AUTHORIZATION_FAILED = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED)
# what a metadata answer or a create may say while a topic is being created or its leaders elected
_NOT_YET_ERRORS = frozenset(
    {
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_CONTROLLER,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)
_UNKNOWN_TOPIC = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)

READY, ABSENT, PENDING, OTHER_COUNT, FAILED = "ready", "absent", "pending", "other_count", "failed"


@dataclass(frozen=True)
class TopicView:
    """What one metadata answer says of a topic.

    status: READY (all partitions listed, led if asked); ABSENT (unknown to the broker asked);
    PENDING (not yet: a transient error, a partition list with gaps or without leaders);
    OTHER_COUNT (complete, but not the partition count expected); FAILED (an error to report).
    """

    status: str
    partitions: int | None = None  # how many are listed (None: none or absent)
    replication_factor: int | None = None  # replicas of its least replicated partition
    detail: str = ""  # why PENDING, OTHER_COUNT or FAILED
    error_code: int | None = None  # FAILED: the broker's error


def classify_topic(info: TopicMetadata | None, expected: int | None = None, leaders: bool = False) -> TopicView:
    """Whether a metadata answer shows the topic ready, not (yet) there, or in error.

    `expected`: the partition count it must have to be READY; `leaders`: every partition must
    have a leader too (right after a create, leaders are still being elected).
    """
    if info is None or (info.error is not None and info.error.code() in _UNKNOWN_TOPIC):
        return TopicView(ABSENT, detail="not in the cluster's metadata")
    if info.error is not None:
        code = info.error.code()
        if code in _NOT_YET_ERRORS or info.error.retriable():
            return TopicView(PENDING, detail=f"metadata reports {info.error.str()}")
        return TopicView(FAILED, detail=info.error.str(), error_code=code)
    listed = info.partitions
    count = len(listed) or None
    # during a reassignment a partition lists its old and new replicas: the smallest is the factor
    factor = min((len(p.replicas) for p in listed.values() if p.replicas), default=None)
    if count is None:
        return TopicView(PENDING, detail="no partitions listed yet")
    if set(listed) != set(range(count)):
        missing = sorted(set(range(max(listed) + 1)) - set(listed))
        return TopicView(PENDING, count, factor, f"partitions {missing} not listed yet")
    if leaders:
        leaderless = sorted(p.id for p in listed.values() if p.leader < 0 or _leader_unknown(p))
        if leaderless:
            return TopicView(PENDING, count, factor, f"partitions {leaderless} have no leader yet")
    if expected is not None and count != expected:
        return TopicView(OTHER_COUNT, count, factor, f"{count} partitions listed, {expected} expected")
    return TopicView(READY, count, factor)


def _leader_unknown(partition: PartitionMetadata) -> bool:
    return partition.error is not None and partition.error.code() == KafkaError.LEADER_NOT_AVAILABLE


def _read_metadata(admin: AdminClient, topic: str) -> ClusterMetadata:
    try:
        return admin.list_topics(topic=topic, timeout=_TIMEOUT_S)
    except KafkaException as exc:
        raise TopicError(
            f"cannot reach Kafka to describe topic {topic!r} within {_TIMEOUT_S:.0f} s: {exc.args[0].str()}; "
            "check --bootstrap-servers and the -X security settings"
        ) from exc


def _watch(
    admin: AdminClient, topic: str, *, expected: int | None = None, leaders: bool = False, created: bool = False
) -> tuple[TopicView, ClusterMetadata]:
    """The topic's view once READY, or ABSENT (unless `created`: then that is "not yet" too), or
    whatever it was when the bound passed; FAILED raises."""
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        metadata = _read_metadata(admin, topic)
        view = classify_topic(metadata.topics.get(topic), expected, leaders)
        if view.status == FAILED:
            if view.error_code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise AccessError(f"not authorized to DESCRIBE topic {topic!r} (the broker's ACLs); {ACL_HINT}")
            raise TopicError(f"cannot describe topic {topic!r}: {view.detail}")
        if view.status == READY or (view.status == ABSENT and not created) or time.monotonic() >= deadline:
            return view, metadata
        time.sleep(_POLL_S)


def _not_ready(topic: str, view: TopicView, created: bool = False) -> TopicError:
    how = "was created (by this worker or by another at the same moment) but " if created else ""
    return TopicError(
        f"topic {topic!r} {how}is not ready after {_TIMEOUT_S:.0f} s: {view.detail}; check that the brokers "
        f"are up and their controller has a quorum (kafka-topics.sh --describe --topic {topic}), then start again"
    )


def partition_count(admin: AdminClient, topic: str) -> int | None:
    """Partitions of a topic, None when it does not exist; a transient metadata error is waited out."""
    view, _ = _watch(admin, topic)
    if view.status == ABSENT:
        return None
    if view.status == PENDING:
        raise _not_ready(topic, view)
    return view.partitions


def create_topic(
    admin: AdminClient,
    topic: str,
    partitions: int,
    config: dict[str, str] | None = None,
    replication_factor: int | None = None,
) -> int:
    """Create a topic, or accept one another worker created meanwhile; its partition count once
    the metadata shows it with all its partitions led (or another complete count at the bound).

    `replication_factor` None: the broker's default.
    """
    factor = replication_factor or -1
    shown = f"partitions={partitions} replication_factor={replication_factor or 'broker default'}"
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        future = admin.create_topics([NewTopic(topic, partitions, factor, config=config or {})])[topic]
        try:
            future.result(timeout=_TIMEOUT_S)
            log.info("created topic=%s %s config=%s", topic, shown, config or {})
            break
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() in _AUTHORIZATION_FAILED:
                raise AccessError(
                    f"not authorized to CREATE topic {topic!r} ({error.str()}): grant CREATE on it (or on the "
                    f"cluster), or create it beforehand with {partitions} partitions and config {config or {}}; "
                    f"{ACL_HINT}"
                ) from exc
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                log.info("topic=%s exists already (created meanwhile, e.g. by another worker)", topic)
                break
            if (error.code() in _NOT_YET_ERRORS or error.retriable()) and time.monotonic() < deadline:
                time.sleep(_POLL_S)  # e.g. the controller is moving: ask again
                continue
            hint = (
                "; use at most as many replicas as the cluster has brokers up (--replication-factor)"
                if error.code() == KafkaError.INVALID_REPLICATION_FACTOR
                else ""
            )
            raise TopicError(f"cannot create topic {topic!r} ({shown}): {error.str()}{hint}") from exc
    # the brokers learn of a new topic a moment after its creation, each at its own pace
    view, _ = _watch(admin, topic, expected=partitions, leaders=True, created=True)
    if view.status not in (READY, OTHER_COUNT) or view.partitions is None:
        raise _not_ready(topic, view, created=True)
    return view.partitions


def _cleanup_policy(admin: AdminClient, topic: str) -> str:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    deadline = time.monotonic() + _TIMEOUT_S
    while True:
        try:
            configs = admin.describe_configs([resource])[resource].result(timeout=_TIMEOUT_S)
            return str(configs["cleanup.policy"].value)
        except KafkaException as exc:
            code = exc.args[0].code()
            # a broker that has not learnt of a topic just created answers that it does not exist
            if (code in _UNKNOWN_TOPIC or code in _NOT_YET_ERRORS) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
                continue
            raise


def ensure_worker_topics(
    admin: AdminClient,
    *,
    input_topic: str,
    output_topic: str,
    state_topic: str,
    dlq_topic: str,
    replication_factor: int = 0,
) -> int:
    """Check the input, create what is missing, refuse a state topic that is not co-partitioned.

    Several workers may run this at once: a topic another one creates meanwhile is waited for.
    The topics created get `replication_factor` replicas; 0: as many as the input topic's partitions have.
    Returns the input's partition count.
    """
    view, metadata = _watch(admin, input_topic)
    if view.status == ABSENT:
        raise TopicError(
            f"input topic {input_topic!r} does not exist; create it (its partition count is the "
            "group's parallelism), e.g. with `lstm-worker produce --partitions N`"
        )
    if view.status != READY or view.partitions is None:
        raise _not_ready(input_topic, view)
    partitions = view.partitions
    brokers = len(metadata.brokers)
    if replication_factor > brokers:
        raise TopicError(
            f"--replication-factor {replication_factor}: the cluster has {brokers} broker"
            f"{'' if brokers == 1 else 's'} up (its metadata lists {sorted(metadata.brokers)}), so a topic cannot "
            f"have {replication_factor} replicas; use at most {brokers}, or 0 for the input topic's factor "
            f"({view.replication_factor})"
        )
    if view.replication_factor == 1 and brokers > 1:
        log.warning(
            "input topic is not replicated: topic=%s replication_factor=1 brokers=%d; the loss of a broker "
            "makes its partitions unavailable (and loses their events if its disk goes)",
            input_topic,
            brokers,
        )
    factor = replication_factor or view.replication_factor
    # min.insync.replicas is left to the broker's default: the operator's durability policy,
    # which the producer's acks=all honours; a fixed value could exceed a small factor
    counts: dict[str, int] = {}
    for topic, config in ((output_topic, None), (dlq_topic, None), (state_topic, {"cleanup.policy": "compact"})):
        count = partition_count(admin, topic)
        counts[topic] = count if count is not None else create_topic(admin, topic, partitions, config, factor)
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
    state_partitions = counts[state_topic]  # as read, or as the wait after its creation saw it
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
