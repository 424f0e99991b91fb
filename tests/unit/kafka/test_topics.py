"""Topic checks without a broker (worker/kafka/topics.py): how a metadata answer is read (ready,
not yet, error) and how `ensure_worker_topics` rides out a concurrent creator and metadata lag,
against a fake admin client whose metadata shows a created topic only after a few reads.
"""

from __future__ import annotations

import re
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import BrokerMetadata, ClusterMetadata, PartitionMetadata, TopicMetadata

from worker.errors import AccessError, TopicError
from worker.kafka import topics as topics_module
from worker.kafka.topics import (
    ABSENT,
    FAILED,
    OTHER_COUNT,
    PENDING,
    READY,
    classify_topic,
    create_topic,
    ensure_worker_topics,
    partition_count,
)


def partition(pid: int, leader: int = 1, replicas: tuple[int, ...] = (1,), error: int | None = None):
    p = PartitionMetadata()
    p.id, p.leader, p.replicas, p.isrs = pid, leader, list(replicas), list(replicas)
    p.error = KafkaError(error) if error is not None else None
    return p


def topic_meta(name: str, partitions: list[PartitionMetadata], error: int | None = None) -> TopicMetadata:
    t = TopicMetadata()
    t.topic, t.partitions = name, {p.id: p for p in partitions}
    t.error = KafkaError(error) if error is not None else None
    return t


def led(name: str, count: int, replicas: tuple[int, ...] = (1,)) -> TopicMetadata:
    return topic_meta(name, [partition(i, replicas=replicas) for i in range(count)])


# --- classify_topic -----------------------------------------------------------------------


def test_a_complete_topic_is_ready_with_its_count_and_replication_factor():
    view = classify_topic(led("t", 3, replicas=(1, 2, 3)), expected=3, leaders=True)
    assert (view.status, view.partitions, view.replication_factor) == (READY, 3, 3)


@pytest.mark.parametrize("info", [None, topic_meta("t", [], error=KafkaError.UNKNOWN_TOPIC_OR_PART)])
def test_an_unknown_topic_is_absent(info):
    assert classify_topic(info).status == ABSENT


@pytest.mark.parametrize(
    ("info", "leaders", "detail"),
    [
        (topic_meta("t", [], error=KafkaError.LEADER_NOT_AVAILABLE), False, "metadata reports"),
        (topic_meta("t", []), False, "no partitions listed yet"),
        (topic_meta("t", [partition(0), partition(2)]), False, "partitions [1] not listed yet"),
        (topic_meta("t", [partition(0), partition(1, leader=-1)]), True, "partitions [1] have no leader yet"),
        (topic_meta("t", [partition(0, error=KafkaError.LEADER_NOT_AVAILABLE)]), True, "partitions [0] have no leader"),
    ],
)
def test_transient_answers_are_not_yet(info, leaders, detail):
    view = classify_topic(info, leaders=leaders)
    assert view.status == PENDING and detail in view.detail, view


def test_a_leaderless_partition_does_not_hold_up_a_count_when_leaders_are_not_asked_for():
    assert classify_topic(topic_meta("t", [partition(0), partition(1, leader=-1)])).status == READY


def test_a_complete_topic_of_another_count_is_other_count():
    view = classify_topic(led("t", 4), expected=6)
    assert (view.status, view.partitions, view.detail) == (OTHER_COUNT, 4, "4 partitions listed, 6 expected")


def test_fewer_partitions_than_expected_with_a_gap_is_still_filling():
    assert classify_topic(topic_meta("t", [partition(0), partition(3)]), expected=6).status == PENDING


def test_the_replication_factor_is_the_least_replicated_partitions():
    info = topic_meta("t", [partition(0, replicas=(1, 2, 3, 4)), partition(1, replicas=(1, 2, 3))])
    assert classify_topic(info).replication_factor == 3  # partition 0 is being reassigned


@pytest.mark.parametrize("code", [KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.TOPIC_EXCEPTION])
def test_other_errors_fail(code):
    view = classify_topic(topic_meta("t", [], error=code))
    assert (view.status, view.error_code) == (FAILED, code)


# --- against a fake admin client ----------------------------------------------------------


def done(value: Any = None, error: int | None = None) -> Future:
    future: Future = Future()
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(KafkaException(KafkaError(error)))
    return future


class LaggingAdmin:
    """Topics as a cluster's metadata shows them: `lag` reads after its creation a topic is still
    unknown, then leaderless; `created_by_other` topics exist already when create is asked."""

    def __init__(self, brokers: int = 1, lag: int = 3, replicas: tuple[int, ...] = (1,)) -> None:
        self.brokers = brokers
        self.lag = lag
        self.replicas = replicas
        self.topics: dict[str, dict[str, Any]] = {}  # name -> partitions, reads left, config, factor
        self.created_by_other: set[str] = set()
        self.policies: dict[str, str] = {}

    def add(self, name: str, partitions: int, config: dict[str, str] | None = None, lag: int = 0) -> None:
        self.topics[name] = {"partitions": partitions, "lag": lag, "config": config or {}, "factor": None}

    def list_topics(self, topic: str, timeout: float) -> ClusterMetadata:
        metadata = ClusterMetadata()
        metadata.brokers = {i: BrokerMetadata() for i in range(1, self.brokers + 1)}
        known = self.topics.get(topic)
        if known is None:
            metadata.topics = {topic: topic_error(topic, KafkaError.UNKNOWN_TOPIC_OR_PART)}
        elif known["lag"] > 1:
            known["lag"] -= 1
            metadata.topics = {topic: topic_error(topic, KafkaError.UNKNOWN_TOPIC_OR_PART)}
        elif known["lag"] == 1:
            known["lag"] -= 1
            metadata.topics = {topic: topic_meta(topic, [partition(i, leader=-1) for i in range(known["partitions"])])}
        else:
            metadata.topics = {topic: led(topic, known["partitions"], self.replicas)}
        return metadata

    def create_topics(self, new_topics: list[Any]) -> dict[str, Future]:
        (new,) = new_topics
        if new.topic in self.created_by_other or new.topic in self.topics:
            self.created_by_other.discard(new.topic)
            if new.topic not in self.topics:
                self.add(new.topic, new.num_partitions, new.config, lag=self.lag)
            return {new.topic: done(error=KafkaError.TOPIC_ALREADY_EXISTS)}
        self.add(new.topic, new.num_partitions, new.config, lag=self.lag)
        self.topics[new.topic]["factor"] = new.replication_factor
        return {new.topic: done()}

    def describe_topics(self, collection: Any, include_authorized_operations: bool) -> dict[str, Future]:
        return {name: done(SimpleNamespace(authorized_operations=None)) for name in collection.topic_names}

    def describe_configs(self, resources: list[Any]) -> dict[Any, Future]:
        (resource,) = resources
        policy = self.topics[resource.name]["config"].get("cleanup.policy", "delete")
        return {resource: done({"cleanup.policy": SimpleNamespace(value=policy)})}


def topic_error(name: str, code: int) -> TopicMetadata:
    return topic_meta(name, [], error=code)


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """Bounds of a fraction of a second: these fakes answer at once."""
    monkeypatch.setattr(topics_module, "_TIMEOUT_S", 0.5)
    monkeypatch.setattr(topics_module, "_POLL_S", 0.001)


def ensure(admin: LaggingAdmin, **kwargs: Any) -> int:
    names = {"input_topic": "in", "output_topic": "out", "state_topic": "in.state", "dlq_topic": "in.dlq"}
    return ensure_worker_topics(admin, **{**names, **kwargs})


def test_a_state_topic_created_meanwhile_by_another_worker_is_waited_for():
    """The cluster issue's race: the state topic unknown when read, then TOPIC_ALREADY_EXISTS, then
    unknown and leaderless for a few more reads."""
    admin = LaggingAdmin(lag=4)
    admin.add("in", 6)
    admin.created_by_other = {"out", "in.dlq", "in.state"}
    assert ensure(admin) == 6
    assert admin.topics["in.state"]["partitions"] == 6


def test_created_topics_get_the_inputs_replication_factor_or_the_one_asked_for():
    admin = LaggingAdmin(brokers=3, replicas=(1, 2))
    admin.add("in", 2)
    ensure(admin)
    assert {admin.topics[t]["factor"] for t in ("out", "in.dlq", "in.state")} == {2}
    admin = LaggingAdmin(brokers=3, replicas=(1, 2))
    admin.add("in", 2)
    ensure(admin, replication_factor=3)
    assert {admin.topics[t]["factor"] for t in ("out", "in.dlq", "in.state")} == {3}


def test_more_replicas_than_brokers_is_refused():
    admin = LaggingAdmin(brokers=1)
    admin.add("in", 2)
    with pytest.raises(TopicError, match="--replication-factor 2: the cluster has 1 broker up"):
        ensure(admin, replication_factor=2)
    assert "out" not in admin.topics  # refused before anything is created


def test_an_unreplicated_input_on_several_brokers_is_warned_about(caplog):
    admin = LaggingAdmin(brokers=3, replicas=(2,))
    admin.add("in", 2)
    ensure(admin)
    assert any("topic=in replication_factor=1 brokers=3" in r.getMessage() for r in caplog.records)


def test_a_state_topic_never_visible_is_reported_as_such_not_as_a_count():
    admin = LaggingAdmin(lag=10**9)
    admin.add("in", 6)
    admin.add("out", 6)
    admin.add("in.dlq", 6)
    with pytest.raises(TopicError) as info:
        ensure(admin)
    message = str(info.value)
    assert "'in.state' was created (by this worker or by another at the same moment) but is not ready" in message
    assert "None" not in message and "not in the cluster's metadata" in message


def test_a_state_topic_of_another_count_is_refused_naming_both_counts():
    admin = LaggingAdmin()
    admin.add("in", 6)
    admin.add("in.state", 4, {"cleanup.policy": "compact"})
    with pytest.raises(TopicError, match=re.escape("'in.state' has 4 partitions but input topic 'in' has 6")):
        ensure(admin)


def test_a_state_topic_that_is_not_compacted_is_refused():
    admin = LaggingAdmin()
    admin.add("in", 2)
    admin.add("in.state", 2)
    with pytest.raises(TopicError, match=r"cleanup\.policy=delete"):
        ensure(admin)


def test_partition_count_waits_out_a_leader_election():
    admin = LaggingAdmin()
    admin.add("t", 3)
    answers = iter([topic_error("t", KafkaError.LEADER_NOT_AVAILABLE)] * 3)
    real = admin.list_topics

    def flaky(topic: str, timeout: float) -> ClusterMetadata:
        metadata = real(topic, timeout)
        metadata.topics = {topic: next(answers, metadata.topics[topic])}
        return metadata

    admin.list_topics = flaky
    assert partition_count(admin, "t") == 3


def test_partition_count_reports_a_lasting_transient_error_after_the_bound():
    admin = LaggingAdmin()
    admin.list_topics = lambda topic, timeout: _only(topic, topic_error(topic, KafkaError.LEADER_NOT_AVAILABLE))
    with pytest.raises(TopicError, match="'t' is not ready after 0 s: metadata reports"):
        partition_count(admin, "t")


def test_partition_count_of_a_topic_not_described_to_us_is_an_access_error():
    admin = LaggingAdmin()
    admin.list_topics = lambda topic, timeout: _only(topic, topic_error(topic, KafkaError.TOPIC_AUTHORIZATION_FAILED))
    with pytest.raises(AccessError, match="DESCRIBE topic 't'"):
        partition_count(admin, "t")


def test_create_topic_returns_the_count_once_the_topic_is_led():
    admin = LaggingAdmin(lag=3)
    assert create_topic(admin, "t", 5, replication_factor=None) == 5
    assert admin.topics["t"]["factor"] == -1  # the broker's default


def _only(name: str, info: TopicMetadata) -> ClusterMetadata:
    metadata = ClusterMetadata()
    metadata.topics = {name: info}
    return metadata
