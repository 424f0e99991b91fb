"""The fused step must give Keras' outputs for every cell and activation it serves, agree with
the NumPy step, and be what "auto" serves with when it can."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import pytest

from tests.unit.model.test_twin import FEATURES, LENGTHS, SCHEDULES, TOLERANCE, _histories, _perturb, _stream
from worker.errors import ModelError
from worker.model import StreamingTwin, make_reference_model
from worker.model.fused_kernels import CODES

ACTIVATIONS = sorted(CODES)
CELLS: dict[str, Callable[..., keras.layers.Layer]] = {
    "lstm": keras.layers.LSTM,
    "gru_reset_after": lambda units, **kw: keras.layers.GRU(units, reset_after=True, **kw),
    "gru_reset_before": lambda units, **kw: keras.layers.GRU(units, reset_after=False, **kw),
    "simple_rnn": lambda units, recurrent_activation, **kw: keras.layers.SimpleRNN(units, **kw),
}
# every activation with keras' default recurrent one, and every recurrent one with tanh
CASES = sorted(
    {(cell, act, "sigmoid") for cell in CELLS for act in ACTIVATIONS}
    | {(cell, "tanh", rec) for cell in CELLS if cell != "simple_rnn" for rec in ACTIVATIONS}
)


def _model(cell: str, activation: str, recurrent_activation: str, zero_output_for_mask: bool) -> keras.Model:
    """Masking (the histories' all-zero steps are masked), the cell over every step, a head;
    weights halved (with exponential, which compounds over the steps, a tenth), so that unbounded
    activations stay in a range where float32 keeps 1e-5."""
    keras.utils.set_random_seed(0)
    layer = CELLS[cell](
        6,
        activation=activation,
        recurrent_activation=recurrent_activation,
        return_sequences=True,
        zero_output_for_mask=zero_output_for_mask,
    )
    model = keras.Sequential(
        [keras.Input(shape=(None, FEATURES)), keras.layers.Masking(0.0), layer, keras.layers.Dense(2)]
    )
    scale = 0.1 if "exponential" in (activation, recurrent_activation) else 0.5
    for weight in _perturb(model).weights:
        weight.assign(weight * scale)
    return model


@pytest.mark.parametrize("zero_output_for_mask", [False, True])
@pytest.mark.parametrize(("cell", "activation", "recurrent_activation"), CASES)
def test_fused_step_matches_keras_and_the_numpy_step(
    cell: str, activation: str, recurrent_activation: str, zero_output_for_mask: bool
) -> None:
    """Keras on the full histories (every step's output, masked steps included) against the twin
    fed in rounds of one and several steps, rows of different lengths, longest first (prefix
    rows) and shuffled (a masked merge), with masked steps inside the histories. 1e-5 absolute,
    and relative where an unbounded activation takes values past 1, where float32's own
    spacing is wider than 1e-5."""
    model = _model(cell, activation, recurrent_activation, zero_output_for_mask)
    x = _histories(mask_value_steps=True)
    expected = np.asarray(model(x, training=False))
    fused = StreamingTwin.from_model(model, backend="fused")
    assert fused.backend == "fused"
    for seed, schedule in enumerate(SCHEDULES):
        got = _stream(fused, x, schedule, seed=seed)
        for key, length in enumerate(LENGTHS):
            np.testing.assert_allclose(
                got[key, :length],
                expected[key, :length],
                atol=TOLERANCE,
                rtol=TOLERANCE,
                err_msg=f"key {key}, {schedule}",
            )
    numpy = StreamingTwin.from_model(model, backend="numpy")
    mask = np.arange(x.shape[1])[None, :] < np.array(LENGTHS)[:, None]
    state = np.random.default_rng(1).normal(scale=0.5, size=(len(LENGTHS), fused.state_dim)).astype(np.float32)
    for got, want in zip(fused.step(x, mask, state), numpy.step(x, mask, state), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)


def test_auto_serves_with_the_fused_step_and_falls_back_to_numpy_then_tf() -> None:
    assert StreamingTwin.from_model(make_reference_model()).backend == "fused"
    softmax_cell = keras.Sequential(
        [keras.Input(shape=(None, FEATURES)), keras.layers.GRU(4, activation="softmax", name="soft")]
    )
    assert StreamingTwin.from_model(softmax_cell).backend == "numpy"
    with pytest.raises(ModelError, match=r"activation 'softmax' of layer 'soft' has no fused form; use numpy"):
        StreamingTwin.from_model(softmax_cell, backend="fused")
    gelu_head = keras.Sequential(
        [keras.Input(shape=(None, FEATURES)), keras.layers.LSTM(4), keras.layers.Dense(2, activation="gelu")]
    )
    assert StreamingTwin.from_model(gelu_head).backend == "tf"
    with pytest.raises(ModelError, match=r"activation 'gelu' of layer 'dense.*' has no NumPy form; use tf"):
        StreamingTwin.from_model(gelu_head, backend="fused")
