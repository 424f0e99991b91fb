"""The benchmark's arithmetic: percentiles, the kernel's rate at a round size, phase shares,
rates from timestamps, and the verdicts against a target."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.stats import Target, events_per_s, kernel_rate_at, percentiles, phase_deltas, shares

SWEEP = [
    ("tf", 1, 0.001),  # 1,000 events/s
    ("tf", 4, 0.001),  # 4,000
    ("tf", 16, 0.002),  # 8,000
    ("tf", 64, 0.004),  # 16,000
    ("xla", 1, 0.0005),
    ("xla", 64, 0.001),
]


def test_percentiles_of_a_known_distribution():
    values = np.arange(1, 1001, dtype=float)  # 1..1000 ms
    q = percentiles(values)
    assert q[50.0] == pytest.approx(500.5)
    assert q[99.0] == pytest.approx(990.01)
    assert q[99.9] == pytest.approx(999.001)


def test_percentiles_of_nothing_are_nan():
    assert all(math.isnan(v) for v in percentiles([]).values())


def test_kernel_rate_at_a_measured_size_is_that_row():
    assert kernel_rate_at(SWEEP, "tf", 16) == pytest.approx(8_000)
    assert kernel_rate_at(SWEEP, "xla", 64) == pytest.approx(64_000)


def test_kernel_rate_between_sizes_interpolates_seconds_per_round():
    # 40 keys: halfway between 16 (2 ms) and 64 (4 ms) -> 3 ms per round -> 13,333 events/s
    assert kernel_rate_at(SWEEP, "tf", 40) == pytest.approx(40 / 0.003)


def test_kernel_rate_outside_the_sweep_takes_the_nearest_size():
    assert kernel_rate_at(SWEEP, "tf", 0.5) == pytest.approx(1_000)
    assert kernel_rate_at(SWEEP, "tf", 5000) == pytest.approx(16_000)
    with pytest.raises(ValueError, match="numpy"):
        kernel_rate_at(SWEEP, "numpy", 10)


def test_phase_deltas_and_shares():
    before = {"poll": 1.0, "step": 2.0, "commit": 0.5}
    after = {"poll": 2.0, "step": 5.0, "commit": 0.5, "decode": 1.0}
    deltas = phase_deltas(before, after)
    assert deltas == {"poll": 1.0, "step": 3.0, "commit": 0.0, "decode": 1.0}
    assert shares(deltas) == {"poll": 0.2, "step": 0.6, "commit": 0.0, "decode": 0.2}
    assert shares({"poll": 0.0}) == {"poll": 0.0}


def test_events_per_s_counts_intervals_between_first_and_last():
    assert events_per_s(1001, 10_000, 11_000) == pytest.approx(1000)
    assert math.isnan(events_per_s(1, 5, 5))


def test_target_verdicts_say_by_how_much():
    fast = Target("rate", 50_000, 40_000, unit="events/s")
    assert fast.met and fast.verdict() == "met (1.25x the target)"
    slow = Target("rate", 10_000, 40_000, unit="events/s")
    assert not slow.met
    assert slow.verdict() == "**missed** by 75%: 0.25x the target, needs 4x"
    assert slow.shown() == "10,000 events/s"
    late = Target("p99", 75.0, 50.0, higher_is_better=False, unit="ms")
    assert late.verdict() == "**missed**: 1.5x the limit, 50% over"
    assert Target("ratio", 1.304, 1.3, higher_is_better=False).verdict() == "**missed**: 1.003x the limit, 0.3% over"
    assert Target("p99", 20.0, 50.0, higher_is_better=False).met
    assert Target("share", 0.6, 0.5, unit="share").shown() == "60%"
    assert Target("x", 1234.5, 500, unit="x").shown() == "1,234x"
    assert Target("x", float("nan"), 500).verdict() == "not measured"
