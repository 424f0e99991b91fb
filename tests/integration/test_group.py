"""A consumer group of worker processes losing members to SIGKILL and scaling up and down
mid-stream: states follow the partitions, no step is lost or applied twice."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.kafka_io import metric
from worker.kafka.topics import create_topic
from worker.synthetic import produce_synthetic
from worker.verify import verify

pytestmark = pytest.mark.integration

KEYS, EVENTS, PARTITIONS, RATE = 300, 100, 6, 3000


def start_producing(kafka, topic: str, rate: float = RATE) -> threading.Thread:
    producer = threading.Thread(
        target=produce_synthetic,
        args=(kafka,),
        kwargs=dict(
            topic=topic, keys=KEYS, events_per_key=EVENTS, features=4, rate=rate, seed=21, partitions=PARTITIONS
        ),
    )
    producer.start()
    return producer


def predicted(workers) -> float:
    return sum(metric(w.get("/metrics")[1], "lstm_worker_predictions_total") for w in workers)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def check_drained(kafka, topics, model):
    report = verify(kafka, model_path=str(model), input_topic=topics.input, output_topic=topics.output, timeout_s=60)
    assert report.events == KEYS * EVENTS
    assert report.missing == 0 and report.wrong == 0 and report.unexpected == 0, report.summary()
    return report


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once_v2"])
def test_sigkill_of_a_member_loses_no_step_and_applies_none_twice(kafka, topics, model_file, start_worker, guarantee):
    model = model_file("lstm", (32, 16))
    create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS)
    # a killed member's open transaction holds back read_committed readers until it times out
    args = ("--processing-guarantee", guarantee, "-X", "transaction.timeout.ms=10000")
    workers = [start_worker(model, topics, *args) for _ in range(3)]
    for w in workers:
        w.wait_ready()
    producer = start_producing(kafka, topics.input)
    wait_until(lambda: predicted(workers) >= KEYS * EVENTS / 3, 60, "a third of the predictions")
    workers[0].proc.kill()  # SIGKILL: no flush, no commit, no leaving the group
    workers[0].proc.wait()
    replacement = start_worker(model, topics, *args)
    replacement.wait_ready()
    producer.join(60)
    report = check_drained(kafka, topics, model)
    if guarantee == "exactly_once_v2":  # read_committed: exactly one prediction per event
        assert report.duplicates == 0 and report.predictions == KEYS * EVENTS, report.summary()
    for w in [*workers[1:], replacement]:
        assert w.stop() == 0, w.log()


def test_scale_up_then_down_mid_stream(kafka, topics, model_file, start_worker):
    """The stream comes in three thirds: to one member, to three, and to one again."""
    model = model_file("lstm", (32, 16))
    create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS)
    first = start_worker(model, topics)
    first.wait_ready()

    def third(seed: int) -> None:
        produce_synthetic(
            kafka,
            topic=topics.input,
            keys=KEYS,
            events_per_key=EVENTS // 3,
            features=4,
            rate=0,
            seed=seed,
            partitions=PARTITIONS,
        )

    third(31)
    added = [start_worker(model, topics) for _ in range(2)]
    for w in added:
        w.wait_ready()
    wait_until(
        lambda: all(metric(w.get("/metrics")[1], "lstm_worker_assigned_partitions") for w in added),
        90,
        "the new members to take partitions",
    )
    third(32)
    wait_until(lambda: predicted([first, *added]) >= 2 * KEYS * (EVENTS // 3), 60, "two thirds predicted")
    for w in added:
        assert w.stop() == 0, w.log()
    wait_until(
        lambda: metric(first.get("/metrics")[1], "lstm_worker_assigned_partitions") == PARTITIONS,
        60,
        "the partitions to come back",
    )
    third(33)
    report = verify(kafka, model_path=str(model), input_topic=topics.input, output_topic=topics.output, timeout_s=60)
    assert report.events == 3 * KEYS * (EVENTS // 3)
    assert report.missing == 0 and report.wrong == 0 and report.unexpected == 0, report.summary()
    restored = metric(first.get("/metrics")[1], "lstm_worker_restore_records_total")
    assert restored > 0, "the partitions that came back were restored from the state topic"
    assert first.stop() == 0, first.log()
