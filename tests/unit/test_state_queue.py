"""A commit point's states are copied, then produced a slice per loop iteration.

What must hold (worker/state/store.py): the records carry the states as they were at the
commit point even if rounds change the rows meanwhile; rows stay pinned until acknowledged;
a later commit point first produces what is left of the earlier one; a lost partition's
queued states are never produced. No broker: the producer here only records what it is given.
"""

import numpy as np

from worker.codec import decode_state
from worker.metrics import Metrics
from worker.state.cache import StateCache
from worker.state.store import StateStore

SIZES = [2, 2]
TOPIC = "events.state"


class RecordingProducer:
    """Keeps (topic, key, value, partition) of each record in order."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes | None, int]] = []

    def produce(self, topic: str, key: bytes, value: bytes | None, partition: int = -1, headers=None) -> None:
        self.records.append((topic, key, value, partition))

    def produce_many(self, topic: str, targets: list[tuple[int, bytes]], values: list[bytes]) -> None:
        for (partition, key), value in zip(targets, values, strict=True):
            self.produce(topic, key, value, partition)


def store_with(keys: list[tuple[int, bytes]], track_idle: bool = False) -> tuple[StateStore, list[int]]:
    cache = StateCache(capacity=16, state_dim=sum(SIZES))
    store = StateStore(cache, None, SIZES, "model-a", Metrics(), track_idle=track_idle)  # type: ignore[arg-type]
    rows = [
        cache.insert(eid, np.full(4, i, np.float32), step=i, src=100 + i, ts=1000 + i, dirty=True)
        for i, eid in enumerate(keys)
    ]
    return store, rows


def written(producer: RecordingProducer) -> dict[bytes, float]:
    """Key -> the first state number of its last record."""
    return {key: float(decode_state(value, SIZES).state[0]) for _, key, value, _ in producer.records if value}


KEYS = [(0, b"a"), (0, b"b"), (1, b"c"), (1, b"d"), (2, b"e")]


def test_records_hold_the_states_of_the_commit_point_even_if_rows_change():
    store, rows = store_with(KEYS)
    producer = RecordingProducer()
    assert store.queue_dirty(producer, TOPIC) == 5 and store.queued == 5
    assert producer.records == []  # nothing produced yet: the loop does it a slice at a time
    store.cache.states[rows] = 99.0  # rounds go on and change the rows
    store.cache.src[rows] = 500
    assert store.write_queued(producer, TOPIC, limit=2) == 2 and store.queued == 3
    assert store.write_queued(producer, TOPIC, limit=2) == 2 and store.queued == 1
    assert store.write_queued(producer, TOPIC, limit=2) == 1 and store.queued == 0
    assert store.write_queued(producer, TOPIC, limit=2) == 0
    assert written(producer) == {b"a": 0.0, b"b": 1.0, b"c": 2.0, b"d": 3.0, b"e": 4.0}
    assert [decode_state(v, SIZES).src_offset for *_, v, _ in producer.records] == [100, 101, 102, 103, 104]
    assert [(p, k) for _, k, _, p in producer.records] == KEYS


def test_queued_rows_stay_pinned_until_acknowledged():
    store, _ = store_with(KEYS)
    producer = RecordingProducer()
    store.queue_dirty(producer, TOPIC)
    store.write_queued(producer, TOPIC, limit=3)
    assert store.cache.writing == set(KEYS) and store.cache.room() == 16 - 5
    for _, key, _, partition in producer.records:
        store.delivered(partition, key, 7, False)
    assert store.cache.writing == {(1, b"d"), (2, b"e")}  # queued, not produced: still pinned


def test_a_new_commit_point_first_produces_what_the_last_one_left():
    store, rows = store_with(KEYS)
    producer = RecordingProducer()
    store.queue_dirty(producer, TOPIC)
    store.write_queued(producer, TOPIC, limit=1)
    store.cache.states[rows[0]] = 42.0
    store.cache.mark_dirty([rows[0]])
    assert store.queue_dirty(producer, TOPIC) == 1  # a's newer state, queued behind the rest
    assert [k for _, k, _, _ in producer.records] == [b"a", b"b", b"c", b"d", b"e"]
    assert store.write_dirty(producer, TOPIC) == 1
    assert [k for _, k, _, _ in producer.records][-1] == b"a" and written(producer)[b"a"] == 42.0


def test_a_lost_partitions_queued_states_are_never_produced():
    store, _ = store_with(KEYS)
    producer = RecordingProducer()
    store.queue_dirty(producer, TOPIC)
    store.write_queued(producer, TOPIC, limit=1)  # a (partition 0) is out already
    store.forget(0)
    store.forget(2)
    assert store.queued == 2
    store.write_queued(producer, TOPIC)
    assert [(p, k) for _, k, _, p in producer.records] == [(0, b"a"), (1, b"c"), (1, b"d")]


def test_paced_writes_follow_the_share_of_time_and_never_fall_below_the_slice():
    store, _ = store_with(KEYS)
    producer = RecordingProducer()
    store.queue_dirty(producer, TOPIC)
    assert store.write_queued_share(producer, TOPIC, share=0.0, at_least=1) == 1
    assert store.write_queued_share(producer, TOPIC, share=0.6, at_least=1) == 2  # ceil(0.6 x 5) = 3 out
    assert store.write_queued_share(producer, TOPIC, share=0.6, at_least=1) == 1  # the slice
    assert store.write_queued_share(producer, TOPIC, share=7.0, at_least=1) == 1  # late: all the rest
    assert store.queued == 0 and len(producer.records) == 5


def test_last_events_are_tracked_for_the_ttl_only():
    """Without --state-ttl no per-key (ts, src) is kept: ~140 bytes per key of a 1M-key worker."""
    for track in (False, True):
        store, _ = store_with(KEYS, track_idle=track)
        store.begin_restore([0, 1, 2])
        store.write_dirty(RecordingProducer(), TOPIC)
        tracked = {(p, key): last for p, seen in store.seen.items() for key, last in seen.items()}
        assert tracked == ({eid: (1000 + i, 100 + i) for i, eid in enumerate(KEYS)} if track else {})
