"""Restore of a large state topic on assignment: the index holds every key, the LRU holds the
newest states, and what it holds equals, bit for bit, what was written."""

from __future__ import annotations

import time

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.kafka_io import produce
from worker.codec import encode_state
from worker.kafka.reader import TopicReader
from worker.kafka.topics import create_topic
from worker.metrics import Metrics
from worker.state.cache import StateCache
from worker.state.restore import Restore
from worker.state.store import StateStore

pytestmark = pytest.mark.integration

KEYS, PARTITIONS, SIZES, MODEL = 100_000, 2, [16, 16, 8, 8], "f1ngerpr1nt"


def test_restore_of_100k_keys_is_exact(kafka, topics):
    rng = np.random.default_rng(7)
    states = rng.standard_normal((KEYS, sum(SIZES))).astype(np.float32)
    create_topic(AdminClient(kafka.admin()), topics.state, PARTITIONS, {"cleanup.policy": "compact"})
    records = []
    for k in range(KEYS):  # every key twice: the restore must keep the newest
        key = f"key-{k}".encode()
        records.append((key, encode_state(-states[k], SIZES, model=MODEL, step=1, partition=0, offset=k, ts=0)))
        records.append((key, encode_state(states[k], SIZES, model=MODEL, step=2, partition=0, offset=k, ts=0)))
    produce(kafka, topics.state, records)

    cache = StateCache(KEYS, sum(SIZES))
    reader = TopicReader(kafka.consumer("test-restore", **{"fetch.wait.max.ms": 20}), topics.state)
    store = StateStore(cache, reader, SIZES, MODEL, Metrics())
    started = time.monotonic()
    restore = Restore(store, reader, list(range(PARTITIONS)), Metrics())
    slices = 1
    while not restore.step(20_000):
        slices += 1
    seconds = time.monotonic() - started
    restored = restore.count
    assert slices > 2 * KEYS / 20_000 - 1, "the restore ran in slices"
    reader.close()
    print(f"restore: {restored} records in {seconds:.2f} s = {restored / seconds:,.0f} records/s")

    assert restored == 2 * KEYS
    assert sum(len(index) for index in store.index.values()) == KEYS
    assert len(cache) == KEYS
    for k in rng.choice(KEYS, 1000, replace=False):
        key = f"key-{k}".encode()
        partition = next(p for p, index in store.index.items() if key in index)
        row = cache.lookup_many([(partition, key)])[0]
        assert row is not None and cache.step[row] == 2
        assert cache.states[row].tobytes() == states[k].tobytes()
