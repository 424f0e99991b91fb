"""The Quix Streams peer's step and records (bench/peer_step.py) against Keras and the worker's
codec, in the main venv: the peer's own venv has neither."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.kafka_io import BenchError
from bench.peer_run import export_weights
from bench.peer_step import PeerModel, PredictionEncoder, decode_event
from worker.codec import decode_prediction, encode_event, encode_prediction
from worker.model import fingerprint
from worker.model.reference import make_reference_model, save_model


def _saved(tmp_path: Path, **kwargs: object) -> tuple[Path, object]:
    model = make_reference_model(features=4, **kwargs)  # type: ignore[arg-type]
    path = tmp_path / "model.keras"
    save_model(model, str(path))
    return path, model


@pytest.mark.parametrize("units", [(100, 200), (7, 5, 3)])
def test_the_step_per_event_equals_keras_on_the_full_history(tmp_path: Path, units: tuple[int, ...]):
    path, model = _saved(tmp_path, units=units, seed=4)
    peer = PeerModel.load(export_weights(path, tmp_path / "model.npz"))
    assert peer.units == list(units) and peer.state_size == 2 * sum(units)
    assert peer.fingerprint == fingerprint(model)  # type: ignore[arg-type]
    x = (3 * np.random.default_rng(1).standard_normal((4, 25, 4))).astype(np.float32)  # saturating gates too
    want = np.stack([model.predict(x[:, : t + 1], verbose=0) for t in range(x.shape[1])], axis=1)  # type: ignore[attr-defined]
    got = np.zeros_like(want)
    for row in range(len(x)):
        state = peer.zero_state()
        for t in range(x.shape[1]):
            got[row, t], state = peer.step(x[row, t], state)
    assert np.abs(got - want).max() <= 1e-5


def test_only_stacked_lstms_and_a_sigmoid_dense_are_exported(tmp_path: Path):
    path, _ = _saved(tmp_path, units=(4,), cell="gru")
    with pytest.raises(BenchError, match="no form of layer"):
        export_weights(path, tmp_path / "model.npz")


def test_predictions_are_the_workers_byte_for_byte():
    encoder = PredictionEncoder(1, "990659e96d7f9ffc")
    for ts, partition, offset, step, y in [(1_795_000_000_000, 3, 1041, 17, 0.53), (-5, 0, 0, 1, 1.0)]:
        value = encoder.encode(np.array([y], np.float32), ts, partition, offset, step)
        want = encode_prediction(
            [float(np.float32(y))], ts=ts, partition=partition, offset=offset, step=step, model="990659e96d7f9ffc"
        )
        assert value == want
        decoded = decode_prediction(value)
        assert (decoded.partition, decoded.offset, decoded.step, decoded.ts) == (partition, offset, step, ts)
    with pytest.raises(ValueError, match="at most 15"):
        PredictionEncoder(16, "m")


def test_events_are_read_as_the_worker_writes_them():
    x = np.array([0.5, -1.25, 3.0, 1e-3], np.float32)
    for value, ts, reset, end in [
        (encode_event(x), 7, False, False),  # no ts: the record's
        (encode_event(x, ts=1_795_000_000_000, reset=True), 1_795_000_000_000, True, False),
        (encode_event(x.tolist(), end=True), 7, False, True),  # x as numbers
    ]:
        got, got_ts, got_reset, got_end = decode_event(value, 7)
        np.testing.assert_array_equal(got, x)
        assert (got_ts, got_reset, got_end) == (ts, reset, end)
