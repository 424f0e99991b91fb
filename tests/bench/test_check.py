"""Part 3's value check (bench/check.py) without a broker: the sample is the pre-load's events, and a
wrong, a missing or a NaN prediction of a sampled event fails it."""

import numpy as np
import pytest

from bench.check import Expected, check_values, expected, require, sampled_events
from bench.kafka_io import BenchError, Predictions, event_values, partition_of
from worker.model.reference import make_reference_model
from worker.synthetic import key_name

EVENTS, KEYS, PARTITIONS = 600, 30, 4


def _predictions(src: np.ndarray, y: np.ndarray) -> Predictions:
    zeros = np.zeros(src.size, np.int64)
    return Predictions(zeros, zeros, src, y)


@pytest.fixture(scope="module")
def want() -> Expected:
    model = make_reference_model(features=4, units=(8, 4), seed=1)
    return expected(model, sampled_events(EVENTS, KEYS, PARTITIONS, sample=5))


def test_the_sample_is_every_event_of_its_keys_at_their_offsets():
    sample = sampled_events(EVENTS, KEYS, PARTITIONS, sample=5)
    again = sampled_events(EVENTS, KEYS, PARTITIONS, sample=5)  # seeded: every drain checks the same
    assert [(k, e.partition, e.offset) for k, e in sample] == [(k, e.partition, e.offset) for k, e in again]
    keys = {key for key, _ in sample}
    assert len(keys) == 5 and len(sample) == 5 * EVENTS // KEYS
    order, x = event_values(EVENTS, KEYS)
    sent = {p: [i for i, k in enumerate(order) if partition_of(key_name(int(k)), PARTITIONS) == p] for p in range(4)}
    for key, event in sample:
        assert event.partition == partition_of(key, PARTITIONS)
        i = sent[event.partition][event.offset]  # the offset-th event sent to its partition
        assert key_name(int(order[i])) == key and np.array_equal(x[i], event.x)


def test_right_values_pass_and_duplicates_are_checked_too(want: Expected):
    assert want.src.size == 5 * EVENTS // KEYS and want.keys == 5 and want.y.shape == (want.src.size, 1)
    other = np.arange(10, dtype=np.int64) + (9 << 40)  # events outside the sample are not looked at
    src = np.concatenate([want.src, want.src[:3], other])
    y = np.concatenate([want.y, want.y[:3], np.full((10, 1), 7.0)]) + 1e-7
    check = check_values(want, _predictions(src, y))
    assert check.ok and (check.events, check.keys, check.missing, check.wrong) == (want.src.size, 5, 0, 0)
    assert 0 < check.max_abs_diff < 1e-6
    assert check.summary().startswith(f"values checked: {want.src.size} events of 5 keys, max |diff| ")
    require(check, "a drain")  # passes

    y[want.src.size + 1] += 1e-3  # a duplicate off
    check = check_values(want, _predictions(src, y))
    assert (check.wrong, check.missing) == (1, 0) and check.max_abs_diff == pytest.approx(1e-3, rel=1e-3)


def test_a_wrong_a_missing_or_a_nan_value_fails(want: Expected):
    y = want.y.copy()
    y[4] += 2e-5
    wrong = check_values(want, _predictions(want.src, y))
    assert (wrong.wrong, wrong.missing) == (1, 0) and not wrong.ok
    with pytest.raises(BenchError, match="1 wrong"):
        require(wrong, "the msgpack drain")

    missing = check_values(want, _predictions(np.delete(want.src, 7), np.delete(want.y, 7, axis=0)))
    assert (missing.wrong, missing.missing) == (0, 1) and "1 missing" in missing.summary()

    y = want.y.copy()
    y[0] = np.nan
    assert check_values(want, _predictions(want.src, y)).wrong == 1

    nothing = check_values(want, _predictions(np.empty(0, np.int64), np.empty((0, 1))))
    assert nothing.missing == want.src.size and not nothing.ok
    wider = check_values(want, _predictions(want.src, np.repeat(want.y, 2, axis=1)))
    assert wider.wrong == want.src.size  # another output width


def test_the_sample_values_are_the_full_history_of_each_prefix(want: Expected):
    """Against the model called on one key's prefixes directly, not through worker/verify.py."""
    model = make_reference_model(features=4, units=(8, 4), seed=1)
    events = sampled_events(EVENTS, KEYS, PARTITIONS, sample=5)
    key = events[0][0]
    history = [e for k, e in events if k == key]
    xs = np.stack([e.x for e in history])
    for n in (1, len(history)):
        y = np.asarray(model(xs[None, :n]))[0]
        e = history[n - 1]
        row = int(np.searchsorted(want.src, (e.partition << 40) | e.offset))
        np.testing.assert_allclose(want.y[row], y, atol=1e-5)
