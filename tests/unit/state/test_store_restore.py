"""A restore batch applied in bulk equals its records applied one by one, and a key's state is
the one with the highest src, whatever order the records landed in.

`StateStore.apply_many` decodes the records of this model and layout together and indexes
them with bulk dict updates, partition by partition; tombstones, records of another model
and unreadable ones go through `apply` in between. No broker: records are plain tuples.
"""

import msgpack
import numpy as np
import pytest

from worker.codec import encode_state
from worker.kafka.reader import Records
from worker.metrics import Metrics
from worker.state.cache import StateCache
from worker.state.store import _UNSEEN, StateStore, _Versions, fresh_records

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


def loose_state(state: np.ndarray, *, model: str, step: int, partition: int, offset: int, ts: int) -> bytes:
    """A state record as another writer may encode it (small ints, not fixed width): readable by
    `decode_state` only, so it goes through `apply`, not the bulk path."""
    parts = [np.asarray(state[:3], "<f4").tobytes(), np.asarray(state[3:], "<f4").tobytes()]
    obj = {"v": 1, "model": model, "step": step, "src": [partition, offset], "ts": ts, "s": parts}
    return msgpack.packb(obj, use_bin_type=True)


def out_of_order_records(rng: np.random.Generator, count: int, keys: int) -> list[tuple[int, int, bytes, bytes | None]]:
    """Records of 3 partitions whose src offsets come in any order (late writes of a member that
    lost the partition), ties too, in both layouts, with tombstones, other models and garbage."""
    records, offsets = [], [0, 0, 0]
    while len(records) < count:
        p = int(rng.integers(3))
        for _ in range(int(rng.integers(1, 12))):
            key = b"k%d" % rng.integers(keys)
            kind = rng.choice(["state", "state", "state", "loose", "tombstone", "other", "garbage"])
            src = int(rng.integers(30))
            state = rng.standard_normal(sum(SIZES)).astype(np.float32)
            fields = dict(model="model-b" if kind == "other" else MODEL, step=src + 1, partition=p, offset=src, ts=src)
            if kind == "tombstone":
                value = None
            elif kind == "garbage":
                value = b"\x81\xa1x\x01"
            elif kind == "loose":
                value = loose_state(state, **fields)
            else:
                value = encode_state(state, SIZES, **fields)
            records.append((p, offsets[p], key, value))
            offsets[p] += 1
    return records


def expected_index(records) -> dict[int, dict[bytes, int]]:
    """The rule, plainly: per key the offset of the state with the highest src (ties: the later);
    a tombstone or a state of another model or layout deletes the key, and a state with a src
    below the highest seen for the key, even a deleted one, is ignored."""
    index: dict[int, dict[bytes, int]] = {0: {}, 1: {}, 2: {}}
    newest: dict[tuple[int, bytes], int] = {}
    for p, offset, key, value in records:
        try:
            obj = msgpack.unpackb(value) if value is not None else None
        except Exception:
            obj = None
        if not isinstance(obj, dict) or obj.get("model") != MODEL:
            index[p].pop(key, None)
            continue
        src = obj["src"][1]
        if src < newest.get((p, key), src):
            continue
        newest[(p, key)] = src
        index[p][key] = offset
    return index


def columns(records) -> Records:
    """Record tuples as the reader's columns."""
    return Records(*(list(column) for column in zip(*records, strict=True))) if records else Records([], [], [], [])


def restored(records, capacity: int, bulk: bool, batch: int, finish: bool = False, expect: bool = False) -> StateStore:
    store = StateStore(StateCache(capacity, sum(SIZES)), None, SIZES, MODEL, Metrics(), track_idle=True)  # type: ignore[arg-type]
    store.begin_restore([0, 1, 2])
    if expect:  # as the restore does once it knows the partitions' watermarks
        store.expect({p: (0, 1 + max((r[1] for r in records if r[0] == p), default=-1)) for p in range(3)})
    for start in range(0, len(records), batch):
        part = records[start : start + batch]
        if bulk:
            store.apply_many(columns(part))
        else:
            for record in part:
                store.apply(*record)
    if finish:
        store.stale_ignored = store.end_restore([0, 1, 2])  # type: ignore[attr-defined]
    return store


def stale_count(store: StateStore) -> float:
    return store.metrics.registry.get_sample_value("lstm_worker_stale_state_records_total") or 0.0


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


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batch", [1, 7, 500])
@pytest.mark.parametrize("expect", [False, True])
def test_out_of_order_src_bulk_equals_one_by_one_and_the_rule(seed, batch, expect):
    rng = np.random.default_rng(100 + seed)
    records = out_of_order_records(rng, 400, keys=25)
    one_by_one, bulk = restored(records, 64, False, batch), restored(records, 64, True, batch, expect=expect)
    assert bulk.index == one_by_one.index == expected_index(records)
    assert bulk.seen == one_by_one.seen
    assert cached(bulk) == cached(one_by_one)
    assert len(bulk.cache) == len(cached(bulk))
    assert stale_count(bulk) == stale_count(one_by_one) > 0


def state(value: float, src: int, step: int | None = None, p: int = 0, model: str = MODEL) -> bytes:
    return encode_state(
        np.full(sum(SIZES), value, np.float32),
        SIZES,
        model=model,
        step=src + 1 if step is None else step,
        partition=p,
        offset=src,
        ts=src,
    )


def held(store: StateStore, key: bytes, p: int = 0) -> tuple[float, int, int] | None:
    """(state value, step, src) of the key in the cache, None when not cached."""
    row = store.cache.lookup_many([(p, key)])[0]
    if row is None:
        return None
    return float(store.cache.states[row][0]), int(store.cache.step[row]), int(store.cache.src[row])


@pytest.mark.parametrize("bulk", [True, False])
def test_a_stale_state_after_a_newer_one_is_ignored(bulk):
    records = [(0, 0, b"a", state(1.0, 10)), (0, 1, b"b", state(2.0, 11)), (0, 2, b"a", state(9.0, 5))]
    store = restored(records, 8, bulk, 500, finish=True)
    assert store.index[0] == {b"a": 0, b"b": 1}
    assert held(store, b"a") == (1.0, 11, 10)
    assert store.seen[0][b"a"] == (10, 10)
    assert stale_count(store) == 1 and store.stale_ignored == 1  # type: ignore[attr-defined]
    assert not store._versions, "freed once restored"


@pytest.mark.parametrize("bulk", [True, False])
def test_a_stale_state_after_a_tombstone_does_not_resurrect_the_key(bulk):
    records = [
        (0, 0, b"a", state(0.0, 10, step=0)),  # the end event's zero state
        (0, 1, b"a", None),  # its tombstone
        (0, 2, b"a", state(9.0, 7)),  # a late write of an older state
    ]
    store = restored(records, 8, bulk, 500)
    assert b"a" not in store.index[0] and held(store, b"a") is None and b"a" not in store.seen[0]
    newer = (0, 3, b"a", state(3.0, 12))
    if bulk:
        store.apply_many(columns([newer]))
    else:
        store.apply(*newer)
    assert store.index[0] == {b"a": 3} and held(store, b"a") == (3.0, 13, 12), "a newer sequence is one"


@pytest.mark.parametrize("bulk", [True, False])
def test_a_reset_with_a_higher_src_replaces_an_applied_state(bulk):
    records = [(0, 0, b"a", state(5.0, 10, step=11)), (0, 1, b"a", state(0.5, 20, step=1))]
    store = restored(records, 8, bulk, 500)
    assert store.index[0] == {b"a": 1} and held(store, b"a") == (0.5, 1, 20)
    assert stale_count(store) == 0


def test_duplicates_of_a_key_within_one_batch():
    """Each record against the key's records before it: the later of equal or higher src wins."""
    records = [
        (0, 0, b"a", state(1.0, 5)),
        (0, 1, b"b", state(2.0, 3)),
        (0, 2, b"a", state(3.0, 9)),
        (0, 3, b"a", state(4.0, 7)),  # stale: 9 was read before it
        (0, 4, b"b", state(5.0, 1)),  # stale
        (0, 5, b"a", state(6.0, 9)),  # a tie: the later wins
        (0, 6, b"c", state(7.0, 2)),
    ]
    store = restored(records, 8, True, 500)
    assert store.index[0] == {b"a": 5, b"b": 1, b"c": 6}
    assert (held(store, b"a"), held(store, b"b")) == ((6.0, 10, 9), (2.0, 4, 3))
    assert stale_count(store) == 2
    before = restored(records[:3], 8, True, 500)  # the newest src so far comes from an earlier batch
    before.apply_many(columns([(0, 7, b"a", state(8.0, 8)), (0, 8, b"a", state(8.5, 9)), (0, 9, b"a", state(9.0, 4))]))
    assert before.index[0][b"a"] == 8 and held(before, b"a") == (8.5, 10, 9) and stale_count(before) == 2


def test_mixed_decoded_and_undecoded_runs():
    """States the bulk path cannot decode (another layout, another model) between decoded ones."""
    loose = loose_state(np.full(sum(SIZES), 2.0, np.float32), model=MODEL, step=21, partition=0, offset=20, ts=20)
    old_loose = loose_state(np.full(sum(SIZES), 2.5, np.float32), model=MODEL, step=8, partition=0, offset=7, ts=7)
    records = [
        (0, 0, b"a", state(1.0, 10)),
        (0, 1, b"a", loose),  # newer, another layout: applied one by one
        (0, 2, b"a", state(3.0, 15)),  # stale against the loose one
        (0, 3, b"b", state(4.0, 10)),
        (0, 4, b"b", old_loose),  # stale, another layout
        (0, 5, b"c", state(5.0, 10)),
        (0, 6, b"c", state(6.0, 30, model="model-b")),  # another model: the key starts from zero
        (0, 7, b"c", state(7.0, 9)),  # stale even so
        (1, 0, b"a", state(8.0, 3, p=1)),  # the same key in another partition is another key
    ]
    bulk, one_by_one = restored(records, 8, True, 500), restored(records, 8, False, 500)
    assert bulk.index == one_by_one.index == {0: {b"a": 1, b"b": 3}, 1: {b"a": 0}, 2: {}}
    assert cached(bulk) == cached(one_by_one)
    assert held(bulk, b"a") == (2.0, 21, 20) and held(bulk, b"c") is None
    assert stale_count(bulk) == stale_count(one_by_one) == 3


def test_fresh_records_equals_a_loop_over_the_records():
    rng = np.random.default_rng(9)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        keys = [b"k%d" % k for k in rng.integers(int(rng.integers(1, 12)), size=n)]
        src = rng.integers(-1, 20, size=n)
        before = {key: int(rng.integers(-1, 20)) for key in set(keys) if rng.random() < 0.5}
        newest = np.array([before.get(key, -(2**63)) for key in keys], dtype=np.int64)
        expected, running = [], dict(before)
        for key, s in zip(keys, src.tolist(), strict=True):
            applied = s >= running.get(key, s)
            expected.append(applied)
            if applied:
                running[key] = s
        assert fresh_records(src, newest, keys).tolist() == expected


def test_versions_are_kept_by_offset_whatever_the_order_and_gaps():
    versions = _Versions()
    versions.put([10, 11, 12], np.array([5, 6, 7]))
    versions.put([40, 47], np.array([8, 9]))  # a compacted partition's gaps
    versions.put([3], np.array([1]))  # before the first: the array is moved
    got = versions.at(np.array([3, 10, 12, 40, 47, 46, -1, 1000]))
    assert got.tolist() == [1, 5, 7, 8, 9, _UNSEEN, _UNSEEN, _UNSEEN]
    versions.delete(12, b"k")
    versions.delete(46, b"j")  # no state read there: nothing to keep
    assert versions.deleted == {b"k": 7} and versions.before(None, b"k") == 7 and versions.before(11, b"x") == 6


@pytest.mark.parametrize("bulk", [True, False])
def test_a_key_warm_with_an_older_state_is_never_left_so_when_rows_run_out(bulk):
    """Rows pinned by live partitions leave the restore less room than a batch: a key whose newer
    state finds no row must not stay cached with its older one."""
    store = restored([(0, 0, b"a", state(1.0, 10))], 4, bulk, 500)
    assert held(store, b"a") == (1.0, 11, 10)
    for k in range(3):  # dirty rows of a live partition: room for one more
        store.cache.insert((5, b"live%d" % k), None, step=0, src=-1, ts=0, dirty=True)
    newer = [(0, 1, b"a", state(2.0, 20)), (0, 2, b"b", state(3.0, 5))]
    if bulk:
        store.apply_many(columns(newer))
    else:
        for record in newer:
            store.apply(*record)
    assert store.index[0] == {b"a": 1, b"b": 2}
    assert held(store, b"a") in (None, (2.0, 21, 20))
    assert held(store, b"b") in (None, (3.0, 6, 5))
