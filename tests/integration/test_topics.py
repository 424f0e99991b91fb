"""The worker's topics on a real broker (worker/kafka/topics.py): the refusals at start (a state
topic not co-partitioned or not compacted, more replicas than brokers) end `lstm-worker run` with
exit 2 and a message saying what to fix; workers starting at once all find the topics one of them
created; the topics created take the input topic's replication factor.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from tests.integration.conftest import REPO, Topics
from worker.config import KafkaConfig
from worker.errors import TopicError
from worker.kafka.topics import create_topic, ensure_worker_topics

pytestmark = pytest.mark.integration

PARTITIONS = 3


def run_to_exit(bootstrap: str, model: Path, topics: Topics, *extra: str) -> tuple[int, str]:
    """`lstm-worker run` expected to stop at start: its exit code and stderr."""
    args = [sys.executable, "-m", "worker", "run", "--bootstrap-servers", bootstrap, "--model", str(model)]
    args += ["--input-topic", topics.input, "--output-topic", topics.output, "--group-id", f"group-{topics.input}"]
    args += ["--metrics-port", "0", *extra]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=REPO)
    return done.returncode, done.stderr


def ensure(admin: AdminClient, topics: Topics, replication_factor: int = 0) -> int:
    return ensure_worker_topics(
        admin,
        input_topic=topics.input,
        output_topic=topics.output,
        state_topic=topics.state,
        dlq_topic=topics.dlq,
        replication_factor=replication_factor,
    )


def replication_factors(admin: AdminClient, *names: str) -> dict[str, set[int]]:
    metadata = admin.list_topics(timeout=30)
    return {name: {len(p.replicas) for p in metadata.topics[name].partitions.values()} for name in names}


def cleanup_policy(admin: AdminClient, topic: str) -> str:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return str(admin.describe_configs([resource])[resource].result(30)["cleanup.policy"].value)


def test_a_state_topic_of_another_partition_count_stops_the_worker(
    broker: str, kafka: KafkaConfig, topics: Topics, model_file
) -> None:
    admin = AdminClient(kafka.admin())
    create_topic(admin, topics.input, PARTITIONS)
    create_topic(admin, topics.state, PARTITIONS + 1, {"cleanup.policy": "compact"})
    expected = (
        f"state topic {topics.state!r} has {PARTITIONS + 1} partitions but input topic {topics.input!r} has "
        f"{PARTITIONS}; they must be co-partitioned (equal counts)"
    )
    with pytest.raises(TopicError) as info:
        ensure(admin, topics)
    assert expected in str(info.value)
    code, err = run_to_exit(broker, model_file(), topics)
    assert code == 2, err
    assert f"lstm-worker run: error: {expected}. Use another --state-topic, or delete it" in err, err


def test_a_state_topic_that_is_not_compacted_stops_the_worker(
    broker: str, kafka: KafkaConfig, topics: Topics, model_file
) -> None:
    admin = AdminClient(kafka.admin())
    create_topic(admin, topics.input, PARTITIONS)
    create_topic(admin, topics.state, PARTITIONS, {"cleanup.policy": "delete"})
    code, err = run_to_exit(broker, model_file(), topics)
    assert code == 2, err
    assert f"state topic {topics.state!r} has cleanup.policy=delete; it must be 'compact'" in err, err
    assert "kafka-configs --alter --add-config cleanup.policy=compact" in err, err


def test_workers_starting_at_once_all_find_the_topics_one_of_them_created(
    kafka: KafkaConfig, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    creators = 8
    create_topic(AdminClient(kafka.admin()), topics.input, 6)
    barrier = threading.Barrier(creators)
    results: list[int | BaseException] = []

    def start() -> None:
        admin = AdminClient(kafka.admin())  # each worker has its own client, as in production
        barrier.wait()
        try:
            results.append(ensure(admin, topics))
        except BaseException as exc:  # reported below with the others' results
            results.append(exc)

    with caplog.at_level(logging.INFO, logger="worker.kafka.topics"):
        threads = [threading.Thread(target=start) for _ in range(creators)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert results == [6] * creators, results
    admin = AdminClient(kafka.admin())
    assert len(admin.list_topics(topics.state, timeout=30).topics[topics.state].partitions) == 6
    assert "compact" in cleanup_policy(admin, topics.state)
    created = [r.getMessage() for r in caplog.records if r.getMessage().startswith("created topic=")]
    for name in (topics.output, topics.state, topics.dlq):
        assert sum(m.startswith(f"created topic={name} ") for m in created) == 1, created


def test_created_topics_take_the_inputs_replication_factor(kafka: KafkaConfig, topics: Topics) -> None:
    admin = AdminClient(kafka.admin())
    create_topic(admin, topics.input, PARTITIONS)
    assert ensure(admin, topics) == PARTITIONS
    factors = replication_factors(admin, topics.input, topics.output, topics.state, topics.dlq)
    assert factors == {name: {1} for name in factors}, factors  # one broker: 1, as the input's


def test_more_replicas_than_brokers_stops_the_worker(
    broker: str, kafka: KafkaConfig, topics: Topics, model_file
) -> None:
    admin = AdminClient(kafka.admin())
    create_topic(admin, topics.input, PARTITIONS)
    with pytest.raises(TopicError, match="the cluster has 1 broker up"):
        ensure(admin, topics, replication_factor=2)
    code, err = run_to_exit(broker, model_file(), topics, "--replication-factor", "2")
    assert code == 2, err
    assert "--replication-factor 2: the cluster has 1 broker up" in err, err
    assert "use at most 1, or 0 for the input topic's factor (1)" in err, err
    assert topics.output not in admin.list_topics(timeout=30).topics  # refused before anything is created
