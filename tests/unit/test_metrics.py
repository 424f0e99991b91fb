"""PhaseClock: every second of the loop is charged to exactly one phase."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from worker.metrics import PHASES, Metrics, PhaseClock


def _busy(metrics: Metrics, phase: str) -> float:
    value = metrics.registry.get_sample_value("lstm_worker_busy_seconds_total", {"phase": phase})
    assert value is not None
    return value


def test_laps_charge_the_time_since_the_previous_lap() -> None:
    metrics = Metrics()
    started = time.perf_counter()
    clock = PhaseClock(metrics)
    time.sleep(0.02)
    clock.lap("poll")
    time.sleep(0.01)
    clock.lap("step")
    clock.lap("step")
    elapsed = time.perf_counter() - started
    assert 0.02 <= _busy(metrics, "poll") < 0.02 + 0.05
    assert 0.01 <= _busy(metrics, "step") < 0.01 + 0.05
    assert sum(_busy(metrics, phase) for phase in PHASES) <= elapsed


def test_cache_lookup_series_exist_before_the_first_miss():
    """A worker whose rounds are all hits still exports miss and new, at 0."""
    metrics = Metrics()
    metrics.cache_lookups.labels("hit").inc(5)
    text = generate_latest(metrics.registry).decode()
    for result, value in (("hit", "5.0"), ("miss", "0.0"), ("new", "0.0")):
        assert f'lstm_worker_cache_lookups_total{{result="{result}"}} {value}' in text
