"""The in-process LRU of worker/state/cache.py: rows, values, eviction order and dirty pinning.

A dirty row holds a state newer than the state topic: evicting it would lose a step, so
eviction must only ever take the least recently used clean row.
"""

import numpy as np
import pytest

from worker.errors import WorkerError
from worker.state.cache import CacheFullError, StateCache

DIM = 3
A, B, C, D, E = ((0, b"a"), (0, b"b"), (1, b"c"), (1, b"d"), (2, b"e"))


def vec(value):
    return np.full(DIM, value, dtype=np.float32)


def put(cache, eid, value=None, *, dirty=False, step=1, src=0, ts=0):
    return cache.insert(eid, None if value is None else vec(value), step=step, src=src, ts=ts, dirty=dirty)


def resident(cache):
    return {eid for eid in (A, B, C, D, E) if eid in cache}


def test_insert_stores_state_step_src_ts_per_row():
    cache = StateCache(capacity=4, state_dim=DIM)
    row_a = cache.insert(A, vec(1.5), step=3, src=41, ts=1000, dirty=False)
    row_b = cache.insert(B, np.array([1, 2, 3], dtype=np.float32), step=9, src=7, ts=2000, dirty=True)
    assert row_a != row_b
    np.testing.assert_array_equal(cache.states[row_a], vec(1.5))
    np.testing.assert_array_equal(cache.states[row_b], [1, 2, 3])
    assert (cache.step[row_a], cache.src[row_a], cache.ts[row_a]) == (3, 41, 1000)
    assert (cache.step[row_b], cache.src[row_b], cache.ts[row_b]) == (9, 7, 2000)
    assert (cache.row_of(A), cache.row_of(B)) == (row_a, row_b)
    assert cache.is_dirty(B)
    assert not cache.is_dirty(A)
    assert len(cache) == 2
    assert cache.take_dirty() == ([row_b], [B])  # the row's key, as a commit point reads it


def test_lookup_returns_the_row_or_none():
    cache = StateCache(capacity=2, state_dim=DIM)
    row = put(cache, A, 1.0)
    assert cache.lookup_many([A])[0] == row
    assert cache.lookup_many([B])[0] is None
    assert A in cache
    assert B not in cache
    assert not cache.is_dirty(B)


def test_insert_without_state_writes_zeros_even_in_a_reused_row():
    cache = StateCache(capacity=1, state_dim=DIM)
    row = put(cache, A, 7.0, step=5, src=30, ts=99)
    reused = put(cache, B, None, step=0, src=-1, ts=0)  # evicts A
    assert reused == row
    assert not cache.states[row].any()
    assert (cache.step[row], cache.src[row], cache.ts[row]) == (0, -1, 0)
    assert (cache.row_of(A), cache.row_of(B)) == (None, row)
    cache.mark_dirty([row])
    assert cache.take_dirty() == ([row], [B])  # the reused row now names B


def test_reinsert_of_a_resident_key_overwrites_its_row():
    cache = StateCache(capacity=2, state_dim=DIM)
    row = put(cache, A, 1.0, step=1, src=10)
    assert put(cache, A, 2.0, step=2, src=11) == row
    np.testing.assert_array_equal(cache.states[row], vec(2.0))
    assert (cache.step[row], cache.src[row]) == (2, 11)
    assert len(cache) == 1


def test_eviction_takes_the_least_recently_used_key():
    cache = StateCache(capacity=3, state_dim=DIM)
    rows = {eid: put(cache, eid, i) for i, eid in enumerate((A, B, C))}
    assert cache.lookup_many([A])[0] == rows[A]  # A is now the most recent: B is the oldest
    row_d = put(cache, D, 3.0)
    assert row_d == rows[B]
    assert resident(cache) == {A, C, D}
    put(cache, B, 4.0)  # C is the oldest now
    assert resident(cache) == {A, D, B}
    put(cache, A, 5.0)  # reinsert refreshes A
    put(cache, E, 6.0)  # so D goes
    assert resident(cache) == {A, B, E}
    np.testing.assert_array_equal(cache.states[cache.lookup_many([A])[0]], vec(5.0))


def test_dirty_rows_are_never_evicted():
    cache = StateCache(capacity=3, state_dim=DIM)
    put(cache, A, 1.0, dirty=True)
    put(cache, B, 2.0)
    put(cache, C, 3.0, dirty=True)
    put(cache, D, 4.0)  # A is the oldest but dirty: B goes
    assert resident(cache) == {A, C, D}
    np.testing.assert_array_equal(cache.states[cache.lookup_many([A])[0]], vec(1.0))
    put(cache, E, 5.0)  # only D is clean
    assert resident(cache) == {A, C, E}


def test_cache_full_of_dirty_rows_refuses_and_changes_nothing():
    cache = StateCache(capacity=2, state_dim=DIM)
    row_a = put(cache, A, 1.0, dirty=True)
    row_b = put(cache, B, 2.0, dirty=True)
    with pytest.raises(CacheFullError):
        put(cache, C, 3.0)
    assert resident(cache) == {A, B}
    assert tuple(cache.lookup_many([A, B])) == (row_a, row_b)
    np.testing.assert_array_equal(cache.states[row_a], vec(1.0))
    np.testing.assert_array_equal(cache.states[row_b], vec(2.0))
    assert cache.room() == 0
    put(cache, A, 9.0, dirty=True)  # a resident key still takes its own row


def test_mark_dirty_pins_rows_and_take_dirty_clears():
    cache = StateCache(capacity=3, state_dim=DIM)
    rows = [put(cache, eid, i) for i, eid in enumerate((A, B, C))]
    cache.mark_dirty(np.array([rows[2], rows[0]]))
    assert cache.is_dirty(A)
    assert cache.is_dirty(C)
    assert cache.room() == 1
    put(cache, D, 9.0)  # A is the oldest but now dirty
    assert resident(cache) == {A, C, D}
    assert rows[0] < rows[2] and cache.take_dirty() == ([rows[0], rows[2]], [A, C])  # in row order, with their keys
    assert cache.take_dirty() == ([], [])
    assert not cache.is_dirty(A)
    assert cache.room() == 1  # being written
    cache.written(A)
    cache.written(C)
    assert cache.room() == 3
    put(cache, E, 10.0)  # A is clean again and the oldest
    assert resident(cache) == {C, D, E}


def test_take_dirty_then_all_clean_rows_can_be_evicted():
    cache = StateCache(capacity=2, state_dim=DIM)
    put(cache, A, 1.0, dirty=True)
    put(cache, B, 2.0, dirty=True)
    assert len(cache.take_dirty()[0]) == 2
    cache.written(A)
    cache.written(B)
    put(cache, C, 3.0)
    put(cache, D, 4.0)
    assert resident(cache) == {C, D}


def test_clean_reinsert_does_not_unpin_a_dirty_row():
    cache = StateCache(capacity=1, state_dim=DIM)
    put(cache, A, 1.0, dirty=True)
    put(cache, A, 2.0, dirty=False)
    assert cache.is_dirty(A)
    with pytest.raises(CacheFullError):
        put(cache, B, 3.0)


def test_remove_partition_forgets_its_keys_and_frees_their_rows():
    cache = StateCache(capacity=4, state_dim=DIM)
    put(cache, A, 1.0, dirty=True)
    put(cache, B, 2.0)
    row_c = put(cache, C, 3.0, dirty=True)
    put(cache, D, 4.0)
    assert cache.remove_partition(0) == 2
    assert resident(cache) == {C, D}
    assert len(cache) == 2
    assert cache.take_dirty()[0] == [row_c]  # A's dirty mark went with it
    put(cache, A, 5.0, dirty=True)
    put(cache, B, 6.0, dirty=True)  # the freed rows are reused: nothing evicted
    assert resident(cache) == {A, B, C, D}
    assert cache.remove_partition(7) == 0


def test_remove_single_key():
    cache = StateCache(capacity=2, state_dim=DIM)
    put(cache, A, 1.0, dirty=True)
    cache.remove(A)
    cache.remove(A)  # absent: no error
    assert A not in cache
    assert cache.room() == 2
    assert len(cache) == 0


def test_room_counts_rows_usable_without_writing():
    cache = StateCache(capacity=4, state_dim=DIM)
    assert cache.room() == 4
    put(cache, A, 1.0)
    assert cache.room() == 4  # a clean row can be evicted
    put(cache, B, 1.0, dirty=True)
    put(cache, C, 1.0, dirty=True)
    assert cache.room() == 2
    cache.take_dirty()
    assert cache.room() == 2  # being written
    cache.written(B)
    cache.written(C)
    assert cache.room() == 4


def test_nbytes_counts_resident_rows_only():
    cache = StateCache(capacity=10, state_dim=DIM)
    assert cache.nbytes == 0
    put(cache, A, 1.0)
    put(cache, B, 1.0)
    assert cache.nbytes == 2 * DIM * 4
    cache.remove(A)
    assert cache.nbytes == 1 * DIM * 4


def test_rows_being_written_stay_pinned_until_acknowledged():
    cache = StateCache(capacity=2, state_dim=DIM)
    put(cache, A, 1.0, dirty=True)
    put(cache, B, 2.0, dirty=True)
    cache.take_dirty()  # produced, not acknowledged: an LRU miss would read the old record back
    assert cache.writing == {A, B}
    assert cache.room() == 0
    with pytest.raises(CacheFullError):
        put(cache, C, 3.0)
    cache.written(A)
    assert cache.room() == 1
    put(cache, C, 3.0)  # A, acknowledged, is evicted; B is not
    assert C in cache and B in cache and A not in cache
    cache.remove(B)
    assert cache.writing == set()


def test_lookup_many_gives_rows_of_resident_keys_and_marks_them_most_recent():
    cache = StateCache(capacity=4, state_dim=DIM)
    rows = {eid: put(cache, eid, i) for i, eid in enumerate((A, B, C, D))}
    assert cache.lookup_many([C, E, A]) == [rows[C], None, rows[A]]
    put(cache, E, 9)  # evicts the least recently used: B (A and C were just used)
    assert resident(cache) == {A, C, D, E}
    put(cache, B, 8)  # then D
    assert resident(cache) == {A, B, C, E}
    assert cache.lookup_many([]) == []


def test_fresh_row_is_the_lowest_row_never_used():
    """The restore's prefault faults in rows from here up: a freed row is reused before it moves."""
    cache = StateCache(capacity=6, state_dim=DIM)
    assert cache.fresh_row == 0
    rows = [put(cache, eid) for eid in (A, B)]
    assert rows == [0, 1] and cache.fresh_row == 2
    cache.remove(A)
    assert put(cache, C) == 0  # the freed row first
    assert cache.fresh_row == 2
    assert cache.place_many([D, E]) == [2, 3]
    assert cache.fresh_row == 4
    cache.remove(D)
    assert put(cache, (3, b"f")) == 2 and put(cache, (3, b"g")) == 4
    assert cache.fresh_row == 5


def test_a_full_cache_is_a_worker_error_that_names_the_setting():
    """Its message reaches the user (exit 2), saying what to set rather than a traceback."""
    cache = StateCache(capacity=1, state_dim=DIM)
    put(cache, A, 1.0, dirty=True)
    with pytest.raises(WorkerError) as info:
        put(cache, B, 2.0)
    assert isinstance(info.value, CacheFullError)
    assert "all 1 cached states" in str(info.value) and "--cache-keys / LSTM_WORKER_CACHE_KEYS" in str(info.value)
