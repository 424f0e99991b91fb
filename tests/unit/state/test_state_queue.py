"""A commit point's states are queued, then produced a share at a time, paced by time.

What must hold (worker/state/store.py): the records carry the states as they were at the
commit point even if rounds change the rows meanwhile (a round first sets aside its rows still
queued, up to a limit, past which it produces them); rows stay pinned until acknowledged; a
later commit point first produces what is left of the earlier one; a lost partition's queued
states are never produced; a key's queued state never follows its tombstone. No broker: the
producer here only records what it is given.
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


def test_records_hold_the_states_of_the_commit_point_when_a_round_changes_rows():
    store, _ = store_with(KEYS)
    producer = RecordingProducer()
    assert store.queue_dirty(producer, TOPIC) == 5 and store.queued == 5
    assert producer.records == []  # nothing produced yet: the loop does it a slice at a time
    taken = store.resolve([KEYS[3], KEYS[1]])  # a round takes d and b: their queued states set aside
    assert store.settle(producer, TOPIC, taken) == 2 and store.queued == 5
    assert producer.records == []  # not produced: they go out in their turn
    store.cache.states[taken] = 99.0  # the round changes the rows
    store.cache.src[taken], store.cache.step[taken] = 500, 0
    assert store.settle(producer, TOPIC, taken) == 0  # once only: the next round keeps the first copy
    store.cache.states[taken] = 77.0
    assert store.write_queued(producer, TOPIC, limit=2) == 2 and store.queued == 3
    assert store.write_queued(producer, TOPIC, limit=2) == 2 and store.queued == 1
    assert store.write_queued(producer, TOPIC, limit=2) == 1 and store.queued == 0
    assert store.write_queued(producer, TOPIC, limit=2) == 0
    assert written(producer) == {b"a": 0.0, b"b": 1.0, b"c": 2.0, b"d": 3.0, b"e": 4.0}
    records = [decode_state(v, SIZES) for *_, v, _ in producer.records]
    assert [(r.src_offset, r.step, r.ts) for r in records] == [(100 + i, i, 1000 + i) for i in range(5)]
    assert [(p, k) for _, k, _, p in producer.records] == KEYS


def test_past_the_limit_a_round_produces_its_queued_states_before_changing_them():
    store, _ = store_with(KEYS)
    producer = RecordingProducer()
    store.queue_dirty(producer, TOPIC)
    assert store.keep_limit == 4  # a quarter of the cache's 16 rows
    assert store.settle(producer, TOPIC, store.resolve(KEYS[::-1])) == 5
    assert [k for _, k, _, _ in producer.records] == [b"e"]  # the fifth, past the limit: out now
    store.cache.states[store.resolve(KEYS)] = 99.0
    store.write_queued(producer, TOPIC)
    assert [k for _, k, _, _ in producer.records] == [b"e", b"a", b"b", b"c", b"d"]
    assert written(producer) == {b"a": 0.0, b"b": 1.0, b"c": 2.0, b"d": 3.0, b"e": 4.0}


def test_a_queued_state_goes_out_before_its_keys_tombstone():
    store, _ = store_with(KEYS)
    producer = RecordingProducer()
    store.queue_dirty(producer, TOPIC)
    row = store.resolve([(2, b"e")])
    store.settle(producer, TOPIC, row)  # set aside, then changed by a round
    store.cache.states[row] = 99.0
    store.cache.dirty.clear()  # as once written: only a clean key is tombstoned
    store.ended[(2, b"e")] = 50  # e ended at offset 50, now committed past
    assert store.write_tombstones(producer, TOPIC, {2: 100}) == 1
    assert [(k, v is None) for _, k, v, _ in producer.records] == [(b"e", False), (b"e", True)]
    assert written(producer) == {b"e": 4.0}  # the commit point's state, not the round's
    assert store.queued == 4 and (2, b"e") not in store.cache
    store.write_queued(producer, TOPIC)
    assert [k for _, k, _, _ in producer.records][2:] == [b"a", b"b", b"c", b"d"]


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
    rows = store.resolve([(1, b"d"), (2, b"e")])
    assert store.settle(producer, TOPIC, rows) == 2  # set aside, then changed by a round
    store.cache.states[rows] = 99.0
    store.forget(0)
    store.forget(2)
    assert store.queued == 2
    assert store.settle(producer, TOPIC, store.resolve([(1, b"c")])) == 1  # the queue's rows still found
    store.write_queued(producer, TOPIC)
    assert [(p, k) for _, k, _, p in producer.records] == [(0, b"a"), (1, b"c"), (1, b"d")]
    assert written(producer) == {b"a": 0.0, b"c": 2.0, b"d": 3.0}  # d as set aside, carried past the loss


def test_paced_writes_follow_the_share_of_time():
    store, _ = store_with(KEYS)
    producer = RecordingProducer()
    store.queue_dirty(producer, TOPIC)
    assert store.write_queued_share(producer, TOPIC, share=0.0) == 0
    assert store.write_queued_share(producer, TOPIC, share=0.1) == 1  # ceil(0.1 x 5) = 1 out
    assert store.write_queued_share(producer, TOPIC, share=0.1) == 0  # nothing more due yet
    assert store.write_queued_share(producer, TOPIC, share=0.6) == 2  # ceil(0.6 x 5) = 3 out
    assert store.write_queued_share(producer, TOPIC, share=7.0) == 2  # late: all the rest
    assert store.queued == 0 and len(producer.records) == 5


def test_last_events_are_tracked_for_the_ttl_only():
    """Without --state-ttl no per-key (ts, src) is kept: ~140 bytes per key of a 1M-key worker."""
    for track in (False, True):
        store, _ = store_with(KEYS, track_idle=track)
        store.begin_restore([0, 1, 2])
        store.write_dirty(RecordingProducer(), TOPIC)
        tracked = {(p, key): last for p, seen in store.seen.items() for key, last in seen.items()}
        assert tracked == ({eid: (1000 + i, 100 + i) for i, eid in enumerate(KEYS)} if track else {})
