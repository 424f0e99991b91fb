"""PhaseClock: every second of the loop is charged to exactly one phase; the HTTP endpoint's
port already taken is a setting to change."""

from __future__ import annotations

import argparse
import socket
import time

import pytest
from prometheus_client import generate_latest

from worker.cli import main
from worker.errors import ConfigError
from worker.metrics import PHASES, HealthServer, Metrics, PhaseClock


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


def _in_use(port: int) -> str:
    return (
        f"port {port} is in use on 127.0.0.1: set --metrics-port / LSTM_WORKER_METRICS_PORT, 0 turns the endpoint off"
    )


def test_a_metrics_port_in_use_is_a_config_error_naming_the_setting() -> None:
    with socket.socket() as other_worker:
        other_worker.bind(("127.0.0.1", 0))
        other_worker.listen()
        port = other_worker.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            HealthServer(Metrics(), lambda: True, "127.0.0.1", port)
    assert str(info.value) == _in_use(port)


def test_a_metrics_port_in_use_exits_2_with_the_message(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The endpoint starts once Kafka is reached and the model loaded: `run` up to there is stubbed."""

    def start_endpoint(args: argparse.Namespace) -> int:
        HealthServer(Metrics(), lambda: True, args.metrics_host, args.metrics_port).start()
        return 0

    monkeypatch.setattr("worker.cli._run_worker", start_endpoint)
    with socket.socket() as other_worker:
        other_worker.bind(("127.0.0.1", 0))
        other_worker.listen()
        port = other_worker.getsockname()[1]
        argv = ["run", "--model", "m.keras", "--input-topic", "in", "--output-topic", "out"]
        assert main([*argv, "--metrics-host", "127.0.0.1", "--metrics-port", str(port)]) == 2
    assert f"lstm-worker run: error: {_in_use(port)}\n" in capsys.readouterr().err
