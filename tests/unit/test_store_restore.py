"""A restore batch applied in bulk equals its records applied one by one.

`StateStore.apply_many` decodes the records of this model and layout together and indexes
them with bulk dict updates, partition by partition; tombstones, records of another model
and unreadable ones go through `apply` in between. No broker: records are plain tuples.
"""

import numpy as np
import pytest

from worker.codec import encode_state
from worker.kafka.reader import Records
from worker.metrics import Metrics
from worker.state.cache import StateCache
from worker.state.store import StateStore

SIZES = [3, 2]
MODEL = "model-a"


def random_records(rng: np.random.Generator, count: int, keys: int) -> list[tuple[int, int, bytes, bytes | None]]:
    """Records of 3 partitions in runs, as a consume batch has them: mostly states of this
    model, some tombstones, states of another model and garbage."""
    records, offsets = [], [0, 0, 0]
    while len(records) < count:
        p = int(rng.integers(3))
        for _ in range(int(rng.integers(1, 12))):
            key = b"k%d" % rng.integers(keys)
            kind = rng.choice(["state", "state", "state", "tombstone", "other", "garbage"])
            state = rng.standard_normal(sum(SIZES)).astype(np.float32)
            model = "model-b" if kind == "other" else MODEL
            value = {
                "tombstone": None,
                "garbage": b"\x81\xa1x\x01",
            }.get(
                kind, encode_state(state, SIZES, model=model, step=offsets[p] + 1, partition=p, offset=offsets[p], ts=7)
            )
            records.append((p, offsets[p], key, value))
            offsets[p] += 1
    return records


def columns(records) -> Records:
    """Record tuples as the reader's columns."""
    return Records(*(list(column) for column in zip(*records, strict=True))) if records else Records([], [], [], [])


def restored(records, capacity: int, bulk: bool, batch: int) -> StateStore:
    store = StateStore(StateCache(capacity, sum(SIZES)), None, SIZES, MODEL, Metrics(), track_idle=True)  # type: ignore[arg-type]
    store.begin_restore([0, 1, 2])
    for start in range(0, len(records), batch):
        part = records[start : start + batch]
        if bulk:
            store.apply_many(columns(part))
        else:
            for record in part:
                store.apply(*record)
    return store


def cached(store: StateStore) -> dict:
    cache = store.cache
    out = {}
    for p, index in store.index.items():
        for key in index:
            row = cache.lookup_many([(p, key)])[0]
            if row is not None:
                out[(p, key)] = (cache.states[row].tobytes(), int(cache.step[row]), int(cache.src[row]))
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batch", [1, 7, 500])
def test_bulk_restore_equals_records_one_by_one(seed, batch):
    rng = np.random.default_rng(seed)
    records = random_records(rng, 400, keys=40)
    one_by_one, bulk = restored(records, 64, False, batch), restored(records, 64, True, batch)
    assert bulk.index == one_by_one.index
    assert bulk.seen == one_by_one.seen
    assert cached(bulk) == cached(one_by_one)
    assert len(bulk.cache) == len(cached(bulk)), "no key is cached without being indexed"


def test_a_small_cache_holds_only_newest_states():
    """With fewer rows than keys, which keys stay warm may differ, never what they hold."""
    rng = np.random.default_rng(3)
    records = random_records(rng, 600, keys=80)
    reference, bulk = restored(records, 200, False, 1), restored(records, 10, True, 97)
    assert bulk.index == reference.index
    warm = cached(bulk)
    assert 0 < len(warm) <= 10
    assert all(reference_value == cached(reference)[eid] for eid, reference_value in warm.items())


def test_an_empty_batch_and_a_revoked_partitions_records_change_nothing():
    """The restore filters out records of partitions revoked meanwhile: a batch may be empty."""
    rng = np.random.default_rng(5)
    records = random_records(rng, 50, keys=10)
    store = restored([], 16, True, 1)
    store.apply_many(columns([]))
    del store.index[1]  # revoked while restoring
    store.apply_many(columns(records))
    assert set(store.index) == {0, 2} and len(store.cache) == len(cached(store))
    assert not any((1, key) in store.cache for p, _, key, _ in records if p == 1)
    assert 1 not in store.seen or not store.seen[1]
