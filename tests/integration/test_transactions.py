"""exactly_once_v2 against a real broker: a worker that fails aborts its open transaction on the
way out (read_committed readers are not held back until the transaction times out), and a
transaction that carries records but no changed offset still sends the group's offsets, which is
what fences a member that lost its partitions (KIP-447)."""

from __future__ import annotations

import struct
import time

import msgpack
import numpy as np
import pytest
from confluent_kafka import Consumer, IsolationLevel, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from tests.integration.kafka_io import metric, produce, read_all
from worker.codec import encode_event
from worker.config import KafkaConfig
from worker.kafka.topics import create_topic

pytestmark = pytest.mark.integration

EOS = ("--processing-guarantee", "exactly_once_v2")


def end_offsets(kafka: KafkaConfig, topic: str, isolation: IsolationLevel) -> list[int]:
    """Per partition: the high watermark (read_uncommitted) or the last stable offset (read_committed)."""
    admin = AdminClient(kafka.admin())
    partitions = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    specs = {TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)}
    futures = admin.list_offsets(specs, isolation_level=isolation, request_timeout=10)
    return [futures[tp].result(timeout=15).offset for tp in specs]


def wait_until(condition, timeout: float, what: str) -> float:
    """Poll `condition` until true; the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_fatal_failure_aborts_the_open_transaction_instead_of_leaving_it_to_time_out(
    kafka, topics, model_file, start_worker
):
    """A dead letter the dead-letter topic refuses for good stops the worker (exit 2) with its
    events' predictions in the open transaction. Aborted, the output's last stable offset
    reaches its high watermark at once; left open, only at transaction.timeout.ms (60 s here)."""
    admin = AdminClient(kafka.admin())
    create_topic(admin, topics.input, 1)
    create_topic(admin, topics.dlq, 1, {"max.message.bytes": "1000"})
    rng = np.random.default_rng(4)
    good = [(b"k", encode_event(rng.standard_normal(4).astype(np.float32))) for _ in range(10)]
    bad = msgpack.packb({"x": rng.bytes(3000)})  # wrong shape, larger than the dead-letter topic takes
    # no commit point before the failure: the predictions stay in the one open transaction
    args = (*EOS, "--commit-interval-ms", "600000", "-X", "transaction.timeout.ms=60000")
    worker = start_worker(model_file("lstm", (16, 8)), topics, *args)
    worker.wait_ready()
    produce(kafka, topics.input, good)
    wait_until(
        lambda: end_offsets(kafka, topics.output, IsolationLevel.READ_UNCOMMITTED) == [len(good)],
        60,
        "the predictions on the output topic\n" + worker.log(),
    )
    assert end_offsets(kafka, topics.output, IsolationLevel.READ_COMMITTED) == [0], "held by the open transaction"

    produce(kafka, topics.input, [(b"bad", bad)])
    code = worker.proc.wait(60)
    log = worker.log()
    assert code == 2, log
    assert "Message size too large" in log and "open transaction aborted" in log, log
    took = wait_until(
        lambda: (
            end_offsets(kafka, topics.output, IsolationLevel.READ_COMMITTED)
            == end_offsets(kafka, topics.output, IsolationLevel.READ_UNCOMMITTED)
        ),
        15,  # well before the transaction's 60 s timeout: a protocol outcome, not a timing
        "the output topic's last stable offset to reach its end (the transaction aborted)",
    )
    assert took < 15
    assert read_all(kafka, topics.output) == [], "the aborted predictions are never visible"
    worker.stop()


INTERVAL_MS = 2000


def offset_commit_key(key: bytes) -> tuple[str, str, int] | None:
    """(group, topic, partition) of an offset commit record of __consumer_offsets; None for the
    other record types (group metadata and the new coordinator's records)."""
    (version,) = struct.unpack_from(">h", key, 0)
    if version not in (0, 1):
        return None
    fields, at = [], 2
    for _ in range(2):
        (length,) = struct.unpack_from(">h", key, at)
        fields.append(key[at + 2 : at + 2 + length].decode())
        at += 2 + length
    (partition,) = struct.unpack_from(">i", key, at)
    return fields[0], fields[1], partition


def offset_commit_times(kafka: KafkaConfig, group: str, topic: str) -> list[int]:
    """Timestamps (ms) of every committed offset record of the group for the topic."""
    admin = AdminClient(kafka.admin())
    internal = "__consumer_offsets"
    partitions = len(admin.list_topics(internal, timeout=10).topics[internal].partitions)
    consumer = Consumer(kafka.consumer("tests-offsets-reader", **{"enable.partition.eof": True}))
    consumer.assign([TopicPartition(internal, p, 0) for p in range(partitions)])
    times, at_end, deadline = [], set(), time.monotonic() + 30
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, "could not read __consumer_offsets to its end"
            for m in consumer.consume(1000, timeout=0.5):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(m.partition())
                    continue
                at_end.discard(m.partition())
                key = m.key()
                if (
                    key
                    and m.value() is not None
                    and (parsed := offset_commit_key(key))
                    and parsed[:2] == (group, topic)
                ):
                    times.append(m.timestamp()[1])
    finally:
        consumer.close()
    return times


def test_a_transaction_of_tombstones_alone_sends_the_groups_offsets(kafka, topics, model_file, start_worker):
    """Keys that end: the transaction that commits past their end events is followed by one that
    carries only their tombstones (no event is left, no offset changed). That one must send the
    group's offsets too, or a member that lost the partition could still commit it: so the
    group's latest offset commit comes a commit interval after the tombstones were produced,
    not before them."""
    create_topic(AdminClient(kafka.admin()), topics.input, 1)
    rng = np.random.default_rng(8)
    keys = [f"k{i}".encode() for i in range(5)]
    events = [
        (key, encode_event(rng.standard_normal(4).astype(np.float32), end=j == 2)) for j in range(3) for key in keys
    ]
    produce(kafka, topics.input, events)
    worker = start_worker(model_file("lstm", (16, 8)), topics, *EOS, "--commit-interval-ms", str(INTERVAL_MS))
    worker.wait_ready()

    def tombstones() -> list[int]:
        return [r.timestamp for r in read_all(kafka, topics.state) if r.value is None]

    wait_until(lambda: len(tombstones()) == len(keys), 60, "the ended keys' tombstones\n" + worker.log())
    assert metric(worker.get("/metrics")[1], "lstm_worker_predictions_total") == len(events)
    last_tombstone = max(tombstones())
    commits = offset_commit_times(kafka, f"group-{topics.input}", topics.input)
    assert commits, "the worker committed offsets"
    assert max(commits) >= last_tombstone + INTERVAL_MS / 2, (
        f"the group's latest offset commit (at {max(commits)}) came before the tombstones' transaction "
        f"(produced at {last_tombstone}): that transaction was not fenced"
    )
    assert worker.stop() == 0, worker.log()
