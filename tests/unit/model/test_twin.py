"""The streaming twin must give, at every step, what the model gives for the whole prefix."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Sequence

import keras
import numpy as np
import pytest

from worker.errors import ConfigError, ModelError
from worker.model import StreamingTwin, make_reference_model

FEATURES = 4
LENGTHS = (12, 1, 9, 15, 4)  # one key per entry; histories of different lengths
SCHEDULES = ((1,), (3, 7, 1, 2), (16,))  # chunk lengths, cycled until every key is done
TOLERANCE = 1e-5


def _perturb(model: keras.Model, seed: int = 1) -> keras.Model:
    """Move every weight off its initializer so zero biases or unit stats hide nothing."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = keras.ops.convert_to_numpy(weight) + rng.normal(scale=0.2, size=weight.shape)
        if "variance" in weight.path:
            value = np.abs(value) + 0.5
        weight.assign(value.astype(np.float32))
    return model


def _stacked(recurrent: Callable[..., keras.layers.Layer]) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=(None, FEATURES)),
            recurrent(8, return_sequences=True),
            recurrent(16),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def _lstm() -> keras.Model:
    return _stacked(keras.layers.LSTM)


def _gru_reset_after() -> keras.Model:
    return _stacked(lambda units, **kw: keras.layers.GRU(units, reset_after=True, **kw))


def _gru_reset_before() -> keras.Model:
    return _stacked(lambda units, **kw: keras.layers.GRU(units, reset_after=False, **kw))


def _simple_rnn() -> keras.Model:
    return _stacked(keras.layers.SimpleRNN)


def _mixed() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=(None, FEATURES)),
            keras.layers.LSTM(8, return_sequences=True, dropout=0.2, recurrent_dropout=0.2),
            keras.layers.LayerNormalization(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(12, activation="relu"),
            keras.layers.GRU(16),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(3),
        ]
    )


def _functional_per_step_zoo() -> keras.Model:
    inputs = keras.Input(shape=(None, FEATURES))
    h = keras.layers.Normalization(mean=[0.1, -0.2, 0.3, 0.0], variance=[1.0, 2.0, 0.5, 4.0])(inputs)
    h = keras.layers.Rescaling(0.5, offset=0.1)(h)
    h = keras.layers.TimeDistributed(keras.layers.Dense(5, activation="tanh"))(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.SimpleRNN(8, return_sequences=True)(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.LSTM(8)(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.LayerNormalization(axis=1)(h)
    outputs = keras.layers.Dense(2)(h)
    return keras.Model(inputs, outputs)


def _many_to_many() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=(None, FEATURES)),
            keras.layers.LSTM(8, return_sequences=True),
            keras.layers.GRU(8, return_sequences=True),
            keras.layers.Dense(2),
        ]
    )


def _masked() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=(None, FEATURES)),
            keras.layers.Masking(mask_value=0.0),
            keras.layers.Dense(6),
            keras.layers.LSTM(8, return_sequences=True),
            keras.layers.GRU(8),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


MODELS = {
    "lstm": _lstm,
    "gru_reset_after": _gru_reset_after,
    "gru_reset_before": _gru_reset_before,
    "simple_rnn": _simple_rnn,
    "mixed": _mixed,
    "functional_per_step_zoo": _functional_per_step_zoo,
    "many_to_many": _many_to_many,
    "masked": _masked,
}


def _histories(seed: int = 0, mask_value_steps: bool = False) -> np.ndarray:
    """One history per key; optionally some steps are all zeros (the Masking value)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(LENGTHS), max(LENGTHS), FEATURES)).astype(np.float32)
    if mask_value_steps:
        x[rng.random(x.shape[:2]) < 0.3] = 0.0
        x[0, :3] = 0.0  # a masked start of the whole history, and a masked run
        x[2, 3:5] = 0.0  # a masked run across a chunk boundary
    return x


def _prefix_outputs(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """[key, i] = the model's output for the history x[key, : i + 1]."""
    outputs = []
    for i in range(x.shape[1]):
        out = np.asarray(model(x[:, : i + 1], training=False))
        outputs.append(out[:, -1] if out.ndim == 3 else out)
    return np.stack(outputs, axis=1)


def _stream(twin: StreamingTwin, x: np.ndarray, schedule: Sequence[int], seed: int = 0) -> np.ndarray:
    """Feed every key's history in chunks, keys shuffled and padded with junk each call; with
    an odd seed the keys are then ordered longest chunk first, as the batcher packs a round."""
    rng = np.random.default_rng(seed)
    keys = len(LENGTHS)
    lengths = np.array(LENGTHS)
    state = twin.zero_state(keys)
    done = np.zeros(keys, dtype=int)
    got = np.full((keys, x.shape[1], twin.output_dim), np.nan, dtype=np.float32)
    for chunk in itertools.cycle(schedule):
        if (done >= lengths).all():
            return got
        order = rng.permutation(keys)
        if seed % 2:
            order = order[np.argsort(-np.minimum(chunk, lengths[order] - done[order]), kind="stable")]
        taken = np.minimum(chunk, lengths[order] - done[order])
        batch_x = (100 * rng.normal(size=(keys, chunk, FEATURES))).astype(np.float32)
        batch_mask = np.arange(chunk)[None, :] < taken[:, None]
        for row, key in enumerate(order):
            batch_x[row, : taken[row]] = x[key, done[key] : done[key] + taken[row]]
        y, new_state = twin.step(batch_x, batch_mask, state[order])
        for row, key in enumerate(order):
            got[key, done[key] : done[key] + taken[row]] = y[row, : taken[row]]
            if taken[row] == 0:
                np.testing.assert_array_equal(new_state[row], state[key])
        state[order] = new_state
        done[order] += taken
    raise AssertionError("unreachable: the schedule cycles forever")


@functools.cache
def _case(name: str) -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """The model, its histories and keras' output on every prefix: the slow part, once for
    both backends."""
    keras.utils.set_random_seed(0)
    model = _perturb(MODELS[name]())
    x = _histories(mask_value_steps=name == "masked")
    return model, x, _prefix_outputs(model, x)


@pytest.mark.parametrize("backend", ["numpy", "tf"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_twin_matches_model_on_every_prefix(name: str, backend: str) -> None:
    model, x, expected = _case(name)
    twin = StreamingTwin.from_model(model, backend=backend)
    assert twin.backend == backend
    assert twin.output_dim == expected.shape[-1]
    for seed, schedule in enumerate(SCHEDULES):
        got = _stream(twin, x, schedule, seed=seed)
        for key, length in enumerate(LENGTHS):
            np.testing.assert_allclose(
                got[key, :length],
                expected[key, :length],
                atol=TOLERANCE,
                rtol=0,
                err_msg=f"{name} ({backend}): key {key}, chunks {schedule}",
            )
    assert twin.tracing_count == (2 if backend == "tf" else 0)


def test_masked_value_step_keeps_the_state() -> None:
    keras.utils.set_random_seed(0)
    twin = StreamingTwin.from_model(_perturb(_masked()))
    rng = np.random.default_rng(3)
    _, state = twin.step(
        rng.normal(size=(2, 3, FEATURES)).astype(np.float32),
        np.ones((2, 3), dtype=bool),
        twin.zero_state(2),
    )
    x = np.zeros((2, 2, FEATURES), dtype=np.float32)
    _, after = twin.step(x, np.ones((2, 2), dtype=bool), state)
    np.testing.assert_array_equal(after, state)


def test_reference_model_state_layout() -> None:
    model = make_reference_model()
    twin = StreamingTwin.from_model(model)
    assert twin.state_sizes == [100, 100, 200, 200]
    assert twin.state_dim == 600
    assert (twin.features, twin.output_dim) == (4, 1)
    assert twin.layer_names == [layer.name for layer in model.layers]


def test_state_layout_is_h_then_c_per_layer() -> None:
    """The flat state is [LSTM h, LSTM c, GRU h]: the GRU part is its last output."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(shape=(None, FEATURES)),
            keras.layers.LSTM(3, return_sequences=True),
            keras.layers.GRU(5),
        ]
    )
    twin = StreamingTwin.from_model(_perturb(model))
    assert twin.state_sizes == [3, 3, 5]
    x = _histories()[:, :6]
    y, state = twin.step(x, np.ones(x.shape[:2], dtype=bool), twin.zero_state(x.shape[0]))
    np.testing.assert_allclose(state[:, 6:], y[:, -1], atol=TOLERANCE, rtol=0)
    lstm_out = keras.Sequential(model.layers[:1])(x)
    np.testing.assert_allclose(state[:, :3], np.asarray(lstm_out)[:, -1], atol=TOLERANCE, rtol=0)


def test_no_retracing_across_batch_sizes_and_lengths() -> None:
    keras.utils.set_random_seed(0)
    twin = StreamingTwin.from_model(_lstm(), backend="tf")
    for batch, steps in [(1, 1), (5, 3), (64, 1), (2, 9), (1, 1)]:
        y, state = twin.step(
            np.zeros((batch, steps, FEATURES), dtype=np.float32),
            np.ones((batch, steps), dtype=bool),
            twin.zero_state(batch),
        )
        assert y.shape == (batch, steps, 1)
        assert state.shape == (batch, twin.state_dim)
    assert twin.tracing_count == 2


@pytest.mark.parametrize("backend", ["xla", "numpy"])
def test_backend_matches_tf_on_padded_and_masked_rows(backend: str) -> None:
    keras.utils.set_random_seed(0)
    model = _perturb(_mixed())
    tf_twin = StreamingTwin.from_model(model, backend="tf")
    other = StreamingTwin.from_model(model, backend=backend)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3, FEATURES)).astype(np.float32)  # xla pads it to a (4, 4) bucket
    mask = np.arange(3)[None, :] < np.array([[3], [1], [0]])
    state = rng.normal(size=(3, tf_twin.state_dim)).astype(np.float32)
    y_tf, s_tf = tf_twin.step(x, mask, state)
    y_other, s_other = other.step(x, mask, state)
    assert y_other.shape == y_tf.shape and s_other.shape == s_tf.shape
    assert y_other.dtype == s_other.dtype == np.float32
    np.testing.assert_allclose(s_other, s_tf, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(y_other[mask], y_tf[mask], atol=TOLERANCE, rtol=0)
    np.testing.assert_array_equal(s_other[2], state[2])


def test_auto_serves_with_numpy_unless_a_layer_has_no_numpy_form() -> None:
    assert StreamingTwin.from_model(make_reference_model()).backend == "fused"  # auto: fused first
    gelu_head = keras.Sequential(
        [keras.Input(shape=(None, FEATURES)), keras.layers.LSTM(4), keras.layers.Dense(2, activation="gelu")]
    )
    assert StreamingTwin.from_model(gelu_head).backend == "tf"
    with pytest.raises(ModelError, match=r"activation 'gelu' of layer 'dense.*' has no NumPy form; use tf"):
        StreamingTwin.from_model(gelu_head, backend="numpy")
    with pytest.raises(ConfigError, match="backend must be one of"):
        StreamingTwin.from_model(gelu_head, backend="jax")


def test_step_rejects_wrong_shapes() -> None:
    keras.utils.set_random_seed(0)
    twin = StreamingTwin.from_model(_lstm())
    x = np.zeros((2, 3, FEATURES), dtype=np.float32)
    mask = np.ones((2, 3), dtype=bool)
    with pytest.raises(ValueError, match="state must be"):
        twin.step(x, mask, np.zeros((2, twin.state_dim + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="mask must be"):
        twin.step(x, mask[:, :2], twin.zero_state(2))
    with pytest.raises(ValueError, match="x must be"):
        twin.step(x[:, :, :2], mask, twin.zero_state(2))


def _sequence_model(
    *layers: keras.layers.Layer, batch_size: int | None = None, steps: int | None = None
) -> keras.Model:
    return keras.Sequential([keras.Input(shape=(steps, FEATURES), batch_size=batch_size), *layers])


REFUSED = {
    "bidirectional": (
        lambda: _sequence_model(keras.layers.Bidirectional(keras.layers.LSTM(4), name="bi")),
        "layer 'bi' (Bidirectional) is not supported",
    ),
    "conv1d": (
        lambda: _sequence_model(keras.layers.Conv1D(4, 3, name="conv"), keras.layers.LSTM(4)),
        "layer 'conv' (Conv1D) is not supported",
    ),
    "go_backwards": (
        lambda: _sequence_model(keras.layers.LSTM(4, go_backwards=True, name="back")),
        "layer 'back' (LSTM) is not supported: go_backwards",
    ),
    "stateful": (
        lambda: _sequence_model(keras.layers.GRU(4, stateful=True, name="kept"), batch_size=2),
        "layer 'kept' (GRU) is not supported: stateful",
    ),
    "lambda": (
        lambda: _sequence_model(keras.layers.Lambda(lambda t: t * 2, name="code"), keras.layers.LSTM(4)),
        "layer 'code' (Lambda) is not supported",
    ),
    "pooling": (
        lambda: _sequence_model(
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.GlobalAveragePooling1D(name="pool"),
        ),
        "layer 'pool' (GlobalAveragePooling1D) is not supported",
    ),
    "masking_after_recurrent": (
        lambda: _sequence_model(
            keras.layers.LSTM(4, return_sequences=True),
            keras.layers.Masking(name="late"),
            keras.layers.LSTM(4),
        ),
        "layer 'late' (Masking) is not supported",
    ),
    "norm_across_time": (
        lambda: _sequence_model(
            keras.layers.LayerNormalization(axis=(1, 2), name="across"),
            keras.layers.LSTM(4),
            steps=5,
        ),
        "layer 'across' (LayerNormalization) is not supported: axis",
    ),
    "no_recurrent_layer": (
        lambda: _sequence_model(keras.layers.Dense(2)),
        "no LSTM, GRU or SimpleRNN layer",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_models_are_refused_by_layer_name(name: str) -> None:
    build, message = REFUSED[name]
    with pytest.raises(ModelError, match=re.escape(message)):
        StreamingTwin.from_model(build())


def test_branching_functional_model_is_refused() -> None:
    inputs = keras.Input(shape=(None, FEATURES))
    left = keras.layers.LSTM(4, return_sequences=True)(inputs)
    right = keras.layers.Dense(4)(inputs)
    joined = keras.layers.Add(name="join")([left, right])
    model = keras.Model(inputs, keras.layers.LSTM(2)(joined))
    with pytest.raises(ModelError, match=r"layer 'join' \(Add\) is not supported: it takes 2"):
        StreamingTwin.from_model(model)


def test_prefix_rows_only_for_rows_longest_first_without_holes() -> None:
    """The NumPy step skips padded rows only when the rows with an event are the first ones."""
    from worker.model.numpy_step import _prefix_rows

    def mask(lengths: list[int], steps: int = 3) -> np.ndarray:
        return np.arange(steps)[None, :] < np.array(lengths)[:, None]

    assert _prefix_rows(mask([3, 2, 2, 0])) == [3, 3, 1]
    assert _prefix_rows(mask([1, 3, 2])) is None  # not longest first
    holes = mask([3, 3])
    holes[0, 1] = False  # a masked step inside a row (a Masking layer's)
    assert _prefix_rows(holes) is None
    assert _prefix_rows(mask([1, 1], steps=1)) is None  # one step: nothing to skip


def test_numpy_activations_from_exp_are_exact_enough_and_saturate() -> None:
    """The NumPy step takes sigmoid and tanh from exp: within float32 rounding of the true
    values, and exactly at their limits where exp overflows (no NaN from inf / inf)."""
    from worker.model.numpy_step import _sigmoid, _tanh

    x = np.array([-1e30, -1e4, -100.0, -20.0, -3.0, -1e-8, 0.0, 1e-8, 0.5, 3.0, 20.0, 100.0, 1e4], np.float32)
    wide = x.astype(np.float64)
    with np.errstate(over="ignore"):
        sigmoid, tanh = _sigmoid(x.copy()), _tanh(x.copy())
    assert sigmoid.dtype == tanh.dtype == np.float32
    np.testing.assert_allclose(sigmoid, 0.5 * np.tanh(wide / 2) + 0.5, atol=2e-7, rtol=0)
    np.testing.assert_allclose(tanh, np.tanh(wide), atol=2e-7, rtol=0)
    assert sigmoid[0] == 0.0 and sigmoid[-1] == 1.0
    assert tanh[0] == -1.0 and tanh[-1] == 1.0
