"""`verify --plot`: which keys are traced, how predictions land in the trace, and the PNG."""

from __future__ import annotations

import numpy as np

from worker.codec import Event
from worker.plot import PredictionTrace, plot_trace


def event(partition: int, offset: int) -> Event:
    return Event(partition=partition, offset=offset, x=np.zeros(4, np.float32), ts=0, reset=False, end=False)


def sample() -> tuple[list[tuple[bytes, Event]], dict[tuple[int, int], np.ndarray]]:
    """key a: 3 events, key b: 5, key c: 1 (partition 0), key a again on partition 1: 2."""
    keys = [b"a", b"b", b"b", b"a", b"c", b"b", b"a", b"b", b"b"]
    events = [(k, event(0, i)) for i, k in enumerate(keys)] + [(b"a", event(1, 0)), (b"a", event(1, 1))]
    expected = {(e.partition, e.offset): np.array([0.1 * i, 9.0]) for i, (_, e) in enumerate(events)}
    return events, expected


def test_trace_keeps_the_keys_with_most_events_and_their_offline_predictions():
    events, expected = sample()
    trace = PredictionTrace(max_keys=2)
    trace.choose(events, expected)
    assert [(k.key, k.partition, len(k.offline)) for k in trace.keys] == [(b"b", 0, 5), (b"a", 0, 3)]
    np.testing.assert_allclose(trace.keys[1].offline, [0.0, 0.3, 0.6])  # y[0] of events 0, 3, 6
    assert np.isnan(trace.keys[0].streaming).all()


def test_observed_predictions_land_at_their_event():
    events, expected = sample()
    trace = PredictionTrace(max_keys=2)
    trace.choose(events, expected)
    trace.observe((0, 3), [0.3 + 1e-7, 9.0])
    trace.observe((0, 4), [5.0])  # key c: not traced
    trace.observe((1, 0), [5.0])  # key a of partition 1: another entity, not traced
    a = trace.keys[1]
    assert a.streaming[1] == np.float64(0.3 + 1e-7) and np.isnan(a.streaming[[0, 2]]).all()
    assert abs(a.max_abs_diff - 1e-7) < 1e-12


def test_plot_writes_a_png(tmp_path):
    events, expected = sample()
    trace = PredictionTrace()
    trace.choose(events, expected)
    for _, e in events:
        trace.observe((e.partition, e.offset), list(expected[(e.partition, e.offset)]))
    path = tmp_path / "plot.png"
    plot_trace(trace, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert all(k.max_abs_diff == 0 for k in trace.keys)
