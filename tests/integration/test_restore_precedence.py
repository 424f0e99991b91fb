"""A restore against a real broker: a key's state is the one with the highest src, not the last
written (a cut-off member's late writes), and a state partition missing from the metadata when
the restore starts is waited for, not a crash."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewPartitions

from worker.codec import StateEncoder
from worker.kafka.reader import TopicReader
from worker.kafka.topics import create_topic
from worker.metrics import Metrics
from worker.state.cache import StateCache
from worker.state.restore import Restore
from worker.state.store import StateStore

pytestmark = pytest.mark.integration

SIZES, MODEL = [4, 4], "f1ngerpr1nt"


def write(kafka, topic: str, records: list[tuple[int, bytes, bytes | None]]) -> None:
    """(partition, key, value) in this order; value None is a tombstone."""
    errors: list[str] = []
    producer = Producer(kafka.producer(on_delivery=lambda err, _msg: err and errors.append(str(err))))
    for partition, key, value in records:
        producer.produce(topic, value, key, partition=partition)
    assert producer.flush(30) == 0 and not errors, errors


def states(values: list[float], srcs: list[int]) -> list[bytes]:
    """One state record per value (every float of the state that value), each with its src."""
    n = len(values)
    return StateEncoder(SIZES, MODEL).encode(
        np.repeat(np.array(values, np.float32)[:, None], sum(SIZES), axis=1),
        np.array(srcs, np.int64) + 1,
        np.zeros(n, np.int64),
        np.array(srcs, np.int64),
        np.zeros(n, np.int64),
    )


def restore(kafka, topic: str, partitions: list[int], timeout: float = 60.0) -> tuple[StateStore, Metrics]:
    metrics = Metrics()
    reader = TopicReader(kafka.consumer("test-precedence", **{"fetch.wait.max.ms": 20}), topic)
    try:
        store = StateStore(StateCache(64, sum(SIZES)), reader, SIZES, MODEL, metrics)
        job = Restore(store, reader, partitions, metrics)
        deadline = time.monotonic() + timeout
        while not job.step(1000):
            assert time.monotonic() < deadline, "restore did not finish"
    finally:
        reader.close()
    return store, metrics


def value_of(store: StateStore, key: bytes) -> tuple[float, int] | None:
    row = store.cache.lookup_many([(0, key)])[0]
    return None if row is None else (float(store.cache.states[row][0]), int(store.cache.src[row]))


def test_a_newer_state_wins_over_an_older_one_written_after_it(kafka, topics):
    create_topic(AdminClient(kafka.admin()), topics.state, 1, {"cleanup.policy": "compact"})
    new_a, old_a, end_b, old_b, c = states([2.0, 1.0, 0.0, 5.0, 3.0], [20, 10, 30, 25, 7])
    write(
        kafka,
        topics.state,
        [
            (0, b"a", new_a),
            (0, b"c", c),
            (0, b"a", old_a),  # a zombie's late write: older, landed later
            (0, b"b", end_b),  # b's end: its zero state, then its tombstone
            (0, b"b", None),
            (0, b"b", old_b),  # late again: must not bring b back
        ],
    )
    store, metrics = restore(kafka, topics.state, [0])
    assert store.index[0] == {b"a": 0, b"c": 1}
    assert value_of(store, b"a") == (2.0, 20) and value_of(store, b"c") == (3.0, 7)
    assert value_of(store, b"b") is None
    assert metrics.registry.get_sample_value("lstm_worker_stale_state_records_total") == 2


def test_a_partition_missing_from_the_metadata_is_waited_for(kafka, topics, caplog):
    """The error of the crash this guards against: get_watermark_offsets -> _UNKNOWN_PARTITION."""
    caplog.set_level(logging.INFO, logger="worker.kafka.reader")
    admin = AdminClient(kafka.admin())
    create_topic(admin, topics.state, 1, {"cleanup.policy": "compact"})
    write(kafka, topics.state, [(0, b"a", states([1.0], [3])[0])])
    metrics = Metrics()
    reader = TopicReader(kafka.consumer("test-precedence", **{"fetch.wait.max.ms": 20}), topics.state)
    try:
        store = StateStore(StateCache(64, sum(SIZES)), reader, SIZES, MODEL, metrics)
        job = Restore(store, reader, [0, 1], metrics)
        assert not job.step(1000), "partition 1 does not exist yet"
        assert not job.step(1000)
        for future in admin.create_partitions([NewPartitions(topics.state, 2)]).values():
            future.result(30)
        write(kafka, topics.state, [(1, b"z", states([4.0], [8])[0])])
        deadline = time.monotonic() + 30
        while not job.step(1000):
            assert time.monotonic() < deadline, "restore did not finish once the partition exists"
    finally:
        reader.close()
    assert store.index == {0: {b"a": 0}, 1: {b"z": 0}}
    logged = [r.getMessage() for r in caplog.records]
    assert any("waiting out a transient error" in m and "code=_UNKNOWN_PARTITION" in m for m in logged), logged
    assert any(m.startswith("recovered topic=") for m in logged), logged
