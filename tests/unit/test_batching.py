"""Dynamic batching of worker/batching.py: which events go into a round, in what order, and when.

A round must keep each key's events in offset order, respect max_keys and max_steps,
open a key's slice only with a `reset` and close it only with an `end`, and the batcher
must report the lowest pending offset per partition so commits never skip an event.
"""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.batching import CALL_COST, STEP_COST, Batcher, Events, Round, round_steps

FEATURES = 3
A, B, C, D = (0, b"a"), (0, b"b"), (1, b"c"), (1, b"d")


def ev(partition, offset, *, reset=False, end=False):
    """One event as (partition, offset, reset, end); its x is the offset, its ts 1000 + offset."""
    return (partition, offset, reset, end)


def events(items):
    """(key, ev) pairs as the columns the worker hands the batcher."""
    items = list(items)
    return Events(
        [key for key, _ in items],
        np.array([e[0] for _, e in items], dtype=np.int64),
        np.array([e[1] for _, e in items], dtype=np.int64),
        np.array([1000 + e[1] for _, e in items], dtype=np.int64),
        np.array([e[2] for _, e in items], dtype=bool),
        np.array([e[3] for _, e in items], dtype=bool),
        np.array([np.full(FEATURES, e[1], dtype=np.float32) for _, e in items], dtype=np.float32).reshape(-1, FEATURES),
    )


def slices(round_):
    """Each key's events as ev tuples, key by key."""
    e = round_.events
    flat = [
        ev(p, o, reset=r, end=n)
        for p, o, r, n in zip(e.partition.tolist(), e.offset.tolist(), e.reset.tolist(), e.end.tolist(), strict=True)
    ]
    bounds = np.cumsum(round_.lengths).tolist()
    return [flat[a:b] for a, b in zip([0, *bounds[:-1]], bounds, strict=True)]


def offsets(round_):
    return [[e[1] for e in slice_] for slice_ in slices(round_)]


def add_all(batcher, items):
    batcher.add(events(items))


def drain(batcher):
    rounds = []
    while len(batcher):
        rounds.append(batcher.take())
    return rounds


# --- add / take ---------------------------------------------------------------------------


def test_take_groups_by_key_in_arrival_order_and_keeps_per_key_order():
    batcher = Batcher(max_keys=8, max_steps=8)
    add_all(batcher, [(A, ev(0, 10)), (C, ev(1, 5)), (A, ev(0, 11)), (B, ev(0, 12)), (A, ev(0, 13)), (C, ev(1, 6))])
    assert len(batcher) == 6
    round_ = batcher.take()
    assert round_.ids == [A, C, B]
    assert offsets(round_) == [[10, 11, 13], [5, 6], [12]]
    assert len(batcher) == 0
    assert batcher.pending_events == 0


def test_take_respects_max_keys_oldest_keys_first():
    batcher = Batcher(max_keys=2, max_steps=8)
    keys = [(0, bytes([k])) for k in range(5)]
    add_all(batcher, [(key, ev(0, i)) for i, key in enumerate(keys)])
    rounds = drain(batcher)
    assert [r.ids for r in rounds] == [keys[0:2], keys[2:4], keys[4:5]]
    assert [offsets(r) for r in rounds] == [[[0], [1]], [[2], [3]], [[4]]]


def test_take_respects_max_steps_and_a_key_with_leftovers_goes_behind_the_others():
    batcher = Batcher(max_keys=2, max_steps=2)
    add_all(batcher, [(A, ev(0, o)) for o in range(5)] + [(B, ev(0, 10)), (C, ev(1, 20)), (D, ev(1, 30))])
    first = batcher.take()
    assert (first.ids, offsets(first)) == ([A, B], [[0, 1], [10]])
    assert len(batcher) == 5
    second = batcher.take()  # A's leftovers wait behind C and D
    assert (second.ids, offsets(second)) == ([C, D], [[20], [30]])
    third = batcher.take()
    assert (third.ids, offsets(third)) == ([A], [[2, 3]])
    assert offsets(batcher.take()) == [[4]]
    assert len(batcher) == 0


def test_a_round_lists_its_keys_longest_slice_first():
    """The model step then finds the keys with an event at step t as a prefix of its rows."""
    batcher = Batcher(max_keys=4, max_steps=4)
    add_all(batcher, [(A, ev(0, 1)), (B, ev(0, 2)), (B, ev(0, 3)), (C, ev(1, 4)), (C, ev(1, 5)), (C, ev(1, 6))])
    round_ = batcher.take()
    assert (round_.ids, offsets(round_)) == ([C, B, A], [[4, 5, 6], [2, 3], [1]])
    assert round_.events.ids == [C, C, C, B, B, A]
    mask = round_.pack().mask
    assert all(mask[: int(mask[:, t].sum()), t].all() for t in range(mask.shape[1]))


def test_reset_event_starts_a_new_slice():
    batcher = Batcher(max_keys=4, max_steps=10)
    add_all(batcher, [(A, ev(0, 0)), (A, ev(0, 1)), (A, ev(0, 2, reset=True)), (A, ev(0, 3))])
    assert offsets(batcher.take()) == [[0, 1]]
    second = batcher.take()
    assert offsets(second) == [[2, 3]]
    assert slices(second)[0][0] == ev(0, 2, reset=True)


def test_end_event_closes_its_slice():
    batcher = Batcher(max_keys=4, max_steps=10)
    add_all(batcher, [(A, ev(0, 0)), (A, ev(0, 1, end=True)), (A, ev(0, 2)), (A, ev(0, 3, end=True))])
    first = batcher.take()
    assert offsets(first) == [[0, 1]]
    assert slices(first)[0][-1] == ev(0, 1, end=True)
    assert offsets(batcher.take()) == [[2, 3]]


def test_reset_and_end_on_the_same_event_make_a_slice_of_one():
    batcher = Batcher(max_keys=4, max_steps=10)
    add_all(batcher, [(A, ev(0, 0)), (A, ev(0, 1, reset=True, end=True)), (A, ev(0, 2))])
    assert [offsets(r) for r in drain(batcher)] == [[[0]], [[1]], [[2]]]


def test_reset_as_first_pending_event_does_not_split():
    batcher = Batcher(max_keys=4, max_steps=10)
    add_all(batcher, [(A, ev(0, 0, reset=True)), (A, ev(0, 1)), (A, ev(0, 2, end=True))])
    assert offsets(batcher.take()) == [[0, 1, 2]]


events_per_key = st.lists(
    st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=12), min_size=1, max_size=6
)


@settings(
    max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(events_per_key, st.integers(1, 4), st.integers(1, 5), st.randoms(use_true_random=False))
def test_rounds_keep_order_limits_and_reset_end_rules(flags_per_key, max_keys, max_steps, rnd):
    keys = [(k % 2, bytes([k])) for k in range(len(flags_per_key))]
    queues = {
        key: [ev(key[0], 100 * k + i, reset=r, end=e) for i, (r, e) in enumerate(flags)]
        for k, (key, flags) in enumerate(zip(keys, flags_per_key, strict=True))
    }
    interleaved = [key for key, q in queues.items() for _ in q]
    rnd.shuffle(interleaved)
    cursor = dict.fromkeys(queues, 0)
    batcher = Batcher(max_keys=max_keys, max_steps=max_steps)
    for key in interleaved:  # one event per add, as some polls bring
        batcher.add(events([(key, queues[key][cursor[key]])]))
        cursor[key] += 1

    seen = {key: [] for key in queues}
    while len(batcher):
        pending = [e for key, q in queues.items() for e in q[len(seen[key]) :]]
        lowest = {p: min(e[1] for e in pending if e[0] == p) for p in {e[0] for e in pending}}
        assert batcher.min_pending_offsets() == lowest
        before = len(batcher)
        round_ = batcher.take()
        assert 1 <= len(round_.ids) <= max_keys
        assert len(set(round_.ids)) == len(round_.ids)
        assert len(batcher) == before - len(round_.events)
        assert round_.events.ids == [
            key for key, n in zip(round_.ids, round_.lengths.tolist(), strict=True) for _ in range(n)
        ]
        for key, slice_ in zip(round_.ids, slices(round_), strict=True):
            assert 1 <= len(slice_) <= max_steps
            assert not any(e[2] for e in slice_[1:]), "reset only opens a slice"
            assert not any(e[3] for e in slice_[:-1]), "end only closes a slice"
            seen[key].extend(slice_)
            nxt = queues[key][len(seen[key])] if len(seen[key]) < len(queues[key]) else None
            if nxt is not None and len(slice_) < max_steps:  # slices are as long as the rules allow
                assert slice_[-1][3] or nxt[2]
    assert batcher.min_pending_offsets() == {}
    assert {key: [e[1] for e in s] for key, s in seen.items()} == {key: [e[1] for e in q] for key, q in queues.items()}


# --- ready: when a round runs ------------------------------------------------------------


def test_ready_is_false_when_empty_even_if_caught_up():
    batcher = Batcher(max_keys=2, max_steps=4)
    assert batcher.ready(caught_up=True) is False


def test_ready_as_soon_as_the_poll_took_everything_buffered():
    """One event, the poll caught up: the round runs at once, whatever its size."""
    batcher = Batcher(max_keys=10, max_steps=4)
    add_all(batcher, [(A, ev(0, 0))])
    assert batcher.ready(caught_up=True) is True


def test_not_ready_after_a_full_poll_until_a_poll_catches_up():
    """A full poll means more is buffered: the round grows by those events, then runs once a
    poll brings fewer than a full batch (none at all included)."""
    batcher = Batcher(max_keys=10, max_steps=4)
    add_all(batcher, [(A, ev(0, 0)), (B, ev(0, 1))])
    assert batcher.ready(caught_up=False) is False
    add_all(batcher, [(C, ev(1, 2))])
    assert batcher.ready(caught_up=True) is True
    assert batcher.take().ids == [A, B, C]


def test_ready_when_full_without_catching_up():
    batcher = Batcher(max_keys=2, max_steps=4)
    add_all(batcher, [(A, ev(0, 0)), (A, ev(0, 1))])
    assert batcher.ready(caught_up=False) is False  # many events, but one key
    add_all(batcher, [(B, ev(0, 2))])
    assert batcher.ready(caught_up=False) is True


def test_ready_when_backlogged_on_few_keys():
    """A full round of full slices is pending: it runs, though fewer keys than max_keys wait."""
    batcher = Batcher(max_keys=2, max_steps=2)
    add_all(batcher, [(A, ev(0, 0)), (A, ev(0, 1)), (A, ev(0, 2))])
    assert batcher.ready(caught_up=False) is False
    add_all(batcher, [(A, ev(0, 3))])
    assert batcher.backlogged() and batcher.ready(caught_up=False) is True


def test_leftovers_wait_for_the_next_poll_unless_caught_up():
    batcher = Batcher(max_keys=10, max_steps=1)
    add_all(batcher, [(A, ev(0, 0)), (A, ev(0, 1))])
    assert offsets(batcher.take()) == [[0]]
    assert batcher.ready(caught_up=False) is False
    assert batcher.ready(caught_up=True) is True


# --- offsets and revocation -----------------------------------------------------------------


def test_min_pending_offsets_per_partition():
    batcher = Batcher(max_keys=1, max_steps=1)
    assert batcher.min_pending_offsets() == {}
    add_all(batcher, [(A, ev(0, 7)), (B, ev(0, 8)), (A, ev(0, 9)), (C, ev(1, 41)), (D, ev(1, 40))])
    assert batcher.min_pending_offsets() == {0: 7, 1: 40}
    assert offsets(batcher.take()) == [[7]]  # A, whose next event waits behind the other keys
    assert batcher.min_pending_offsets() == {0: 8, 1: 40}
    assert offsets(batcher.take()) == [[8]]  # B
    assert batcher.min_pending_offsets() == {0: 9, 1: 40}
    assert offsets(batcher.take()) == [[41]]  # C
    assert offsets(batcher.take()) == [[40]]  # D
    assert batcher.min_pending_offsets() == {0: 9}
    assert offsets(batcher.take()) == [[9]]  # A again
    assert batcher.min_pending_offsets() == {}


def test_drop_partition_forgets_only_that_partition():
    batcher = Batcher(max_keys=10, max_steps=10)
    add_all(batcher, [(A, ev(0, 1)), (C, ev(1, 2)), (A, ev(0, 3)), (B, ev(0, 4)), (D, ev(1, 5))])
    assert batcher.drop_partition(0) == 3
    assert len(batcher) == 2
    assert batcher.min_pending_offsets() == {1: 2}
    round_ = batcher.take()
    assert round_.ids == [C, D]
    assert offsets(round_) == [[2], [5]]
    assert batcher.drop_partition(0) == 0


def test_nothing_ready_once_every_pending_partition_is_dropped():
    batcher = Batcher(max_keys=10, max_steps=10)
    add_all(batcher, [(A, ev(0, 1)), (C, ev(1, 2))])
    batcher.drop_partition(0)
    assert batcher.ready(caught_up=True) is True
    batcher.drop_partition(1)
    assert batcher.ready(caught_up=True) is False


# --- Round.pack ---------------------------------------------------------------------------


def round_of(slices_by_key):
    """A Round of these (key, [ev, ...]) slices."""
    ids = [key for key, _ in slices_by_key]
    lengths = np.array([len(evs) for _, evs in slices_by_key], dtype=np.int64)
    return Round(ids, lengths, events([(key, e) for key, evs in slices_by_key for e in evs]))


def test_pack_right_pads_with_zeros_and_masks_padding():
    round_ = round_of([(A, [ev(0, 1), ev(0, 2), ev(0, 3)]), (B, [ev(0, 7)]), (C, [ev(1, 4), ev(1, 5)])])
    packed = round_.pack()
    x, mask = packed.x, packed.mask
    assert x.shape == (3, 3, FEATURES)
    assert x.dtype == np.float32
    assert mask.dtype == bool
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    np.testing.assert_array_equal(x[:, :, 0], [[1, 2, 3], [7, 0, 0], [4, 5, 0]])
    np.testing.assert_array_equal(x[1, 0], np.full(FEATURES, 7))
    assert not x[~mask].any()
    assert packed.key_of.tolist() == [0, 0, 0, 1, 2, 2]
    assert packed.step_of.tolist() == [0, 1, 2, 0, 0, 1]
    assert round_.starts.tolist() == [0, 3, 4]
    np.testing.assert_array_equal(x[packed.key_of, packed.step_of], round_.events.x)


def test_pack_of_one_step_per_key_is_keys_by_one():
    packed = round_of([(A, [ev(0, 1)]), (B, [ev(0, 2)])]).pack()
    assert packed.x.shape == (2, 1, FEATURES)
    assert packed.mask.all()
    np.testing.assert_array_equal(packed.x[:, 0, 0], [1, 2])


# --- round_steps: padding costs as much as real steps -----------------------------------------


def test_one_long_queue_does_not_pad_a_round_of_single_events():
    assert round_steps([1] * 200 + [16], max_steps=16) == 1


def test_keys_with_long_queues_take_their_slices_whole():
    assert round_steps([16] * 10, max_steps=16) == 16
    assert round_steps([40] * 10, max_steps=16) == 16


def test_round_steps_picks_the_most_events_per_unit_of_model_time():
    pending = [3, 4, 5, 2, 16]
    best = round_steps(pending, max_steps=16)
    rate = {t: sum(min(n, t) for n in pending) / (CALL_COST + t * (STEP_COST + len(pending))) for t in range(1, 17)}
    assert rate[best] == max(rate.values())
    assert 1 < best < 16


def test_take_cuts_every_key_at_the_round_steps():
    batcher = Batcher(max_keys=300, max_steps=16)
    add_all(batcher, [((0, b"k%d" % i), ev(0, i)) for i in range(200)] + [(A, ev(0, 1000 + t)) for t in range(16)])
    taken = batcher.take()
    assert set(taken.lengths.tolist()) == {1}
    assert len(batcher) == 15  # A's other events wait for the next round


def test_pack_of_a_taken_round_matches_its_events():
    batcher = Batcher(max_keys=4, max_steps=2)
    add_all(batcher, [(A, ev(0, 1)), (B, ev(0, 2)), (A, ev(0, 3)), (A, ev(0, 4))])
    taken = batcher.take()
    packed = taken.pack()
    x, mask = packed.x, packed.mask
    assert x.shape == (2, 2, FEATURES)
    assert taken.lengths.tolist() == [2, 1]
    np.testing.assert_array_equal(x[:, :, 2], [[1, 3], [2, 0]])
    assert mask.sum() == 3


def test_a_backlog_over_many_keys_keeps_order_and_forgets_keys_served():
    """Keys are integer codes while pending; codes of keys served are dropped, not kept forever."""
    batcher = Batcher(max_keys=3, max_steps=2)
    keys = [(k % 2, b"k%d" % k) for k in range(200)]
    for t in range(3):  # three events per key, interleaved over the keys
        add_all(batcher, [(key, ev(key[0], 1000 * k + t)) for k, key in enumerate(keys)])
    got: dict = {key: [] for key in keys}
    known = []
    while len(batcher):
        round_ = batcher.take()
        for key, offs in zip(round_.ids, offsets(round_), strict=True):
            got[key].extend(offs)
            assert batcher.has(key) == (len(got[key]) < 3)
        known.append(len(batcher._code))
    assert got == {key: [1000 * k + t for t in range(3)] for k, key in enumerate(keys)}
    assert max(known[-10:]) < 50  # codes were renumbered as keys were served
    assert not batcher.has(keys[0]) and batcher.min_pending_offsets() == {}
