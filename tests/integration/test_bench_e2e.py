"""The benchmark's (bench/, `python -m bench`) parts 3-5 at tiny sizes against the real broker: real
workers drain, serve a paced load and restore a state topic, and the report is written from what
they measured. Here, not under tests/bench, for the session broker the other integration tests share."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from bench.check import SAMPLE_KEYS, TOLERANCE, value_sample
from bench.drain import drain, preload
from bench.kafka_io import BenchError, BenchKafka
from bench.kernel import KernelResult, Timing
from bench.latency import latency
from bench.peer_run import PEER_PYTHON, REPO, PeerLauncher, export_weights, peer_drain
from bench.process import Launcher
from bench.report import render
from bench.results import BenchResults
from bench.run import reference_model
from bench.state import state
from worker.config import KafkaConfig

pytestmark = pytest.mark.integration

EVENTS, KEYS, PARTITIONS, STATE_KEYS = 20_000, 200, 4, 5_000


def test_drain_latency_and_state_measure_real_workers(broker: str, tmp_path: Path):
    model, fingerprint, sizes = reference_model(tmp_path)
    assert sizes == [100, 100, 200, 200]
    bench = BenchKafka(KafkaConfig(broker), uuid.uuid4().hex[:8])
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    launcher = Launcher(bench.kafka, model, tmp_path)
    try:
        data = preload(bench, EVENTS, KEYS, PARTITIONS)
        with pytest.raises(BenchError, match="created before in this run"):  # no part reads another's records
            bench.create(data.topic, PARTITIONS)
        expected = value_sample(model, EVENTS, KEYS, PARTITIONS)
        one = drain(bench, launcher, data, workers=1, expected=expected)
        lat = latency(
            bench, launcher, rate=2000, seconds=4, keys=KEYS, partitions=PARTITIONS, warmup_s=1, generator_nice=5
        )
        st = state(bench, launcher, STATE_KEYS, PARTITIONS, sizes, fingerprint, cold_cache_keys=500, cold_events=1000)
    finally:
        launcher.stop_all()
        bench.delete_all()

    assert data.produced.records == EVENTS
    assert (one.distinct, one.missing, one.duplicates) == (EVENTS, 0, 0)  # every event predicted once
    sampled = SAMPLE_KEYS * EVENTS // KEYS  # every event of each sampled key
    assert one.values is not None and one.values.ok and (one.values.events, one.values.keys) == (sampled, SAMPLE_KEYS)
    assert one.values.max_abs_diff <= TOLERANCE and one.values.seconds < 5
    assert one.events_per_s > 0 and one.seconds > 0 and one.rounds > 0
    assert 1 <= one.round_keys <= 256 and one.round_steps >= 1
    assert one.cpu_cores > 0 and one.busy_s["step"] > 0 and one.busy_s["poll"] > 0
    assert 0 < one.machine_cores <= (os.cpu_count() or 1) and 0 <= one.steal_cores <= (os.cpu_count() or 1)

    assert lat.sent > 5_000 and lat.distinct == lat.sent == lat.predictions
    assert 1000 < lat.achieved_per_s < 2200 and lat.served_per_s > 0 and 0 <= lat.steal_share < 1
    assert lat.latency_ms.size + lat.warmup_latency_ms.size == lat.sent
    assert lat.latency_ms.size > 0.7 * lat.sent and lat.latency_ms.min() >= 0
    assert 0 < lat.quantiles[50.0] <= lat.quantiles[99.0] <= lat.quantiles[99.9]
    assert lat.generator_nice == max(5, nice) and os.getpriority(os.PRIO_PROCESS, 0) == nice  # workers keep theirs

    assert st.written.records == STATE_KEYS
    assert st.restore_records == STATE_KEYS and st.restore_seconds > 0 and st.restore_per_s > 0
    assert st.resident_keys == STATE_KEYS
    assert st.idle_rss > 100 << 20 and st.full_rss > 100 << 20  # VmRSS parsed
    assert st.cold_events == 1000 and st.cold_lookups > 0
    assert st.cold_misses >= 0.8 * st.cold_lookups and st.misses_per_s > 0

    kernel = KernelResult(
        [("tf", 1, 1e-3), ("tf", 256, 5e-3)],
        [Timing("classic", 10, 1.0), Timing("one compiled step", 10, 0.01)],
        "tf",
        563_600,
    )
    text = render(BenchResults("bench", "today", "here", "0", kernel, data.produced, one, None, lat, st))
    assert "## 3. End-to-end drain" in text and "## 5. State" in text and "## 6." not in text
    assert f"| msgpack | values checked: {sampled:,} events of {SAMPLE_KEYS} keys, max \\|diff\\| " in text


def test_the_quix_streams_peer_drains_and_serves_a_paced_load(broker: str, tmp_path: Path):
    """The peer's parts (bench/peer_run.py, bench/latency.py with its launcher) on the real peer."""
    if not (REPO / PEER_PYTHON).is_file():
        pytest.skip(f"no peer venv at {PEER_PYTHON}: `make peer` creates it (`make test` does)")
    model, _, _ = reference_model(tmp_path)
    bench = BenchKafka(KafkaConfig(broker), uuid.uuid4().hex[:8])
    peers = PeerLauncher(bench.kafka, str(REPO / PEER_PYTHON), export_weights(model, tmp_path / "m.npz"), tmp_path)
    try:
        data = preload(bench, 5_000, KEYS, PARTITIONS)
        drained = peer_drain(bench, peers, data, value_sample(model, 5_000, KEYS, PARTITIONS))
        lat = latency(bench, peers, 500, 3, KEYS, PARTITIONS, warmup_s=1, name="peer-latency", catch_up_s=15)
    finally:
        peers.stop_all()
        bench.delete_all()
    assert (drained.distinct, drained.missing, drained.duplicates) == (5_000, 0, 0)
    assert drained.events_per_s > 0 and drained.cpu_cores > 0
    assert drained.values is not None and drained.values.ok and drained.values.events == SAMPLE_KEYS * 5_000 // KEYS
    assert lat.caught_up and lat.sustained and lat.distinct == lat.sent > 1_500
    assert 0 < lat.quantiles[50.0] <= lat.quantiles[99.0]
