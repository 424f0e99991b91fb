"""The streaming twin: a recurrent Keras model re-cut to advance many entities' state per call.

A served model was trained to map a whole history to one prediction. The twin gives,
for every new step of every entity, the value the model would give for that entity's
history ending at that step, while seeing each history only in chunks and carrying the
recurrent state between chunks as one flat float32 row per entity.

Only linear chains of per-step layers and forward recurrent layers can be cut this way;
anything that looks at more than the current step and the carried state is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import keras
import numpy as np
import tensorflow as tf

from worker.errors import ConfigError, ModelError
from worker.model.numpy_step import NoNumpyFormError, NumpyStep
from worker.options import BACKENDS

log = logging.getLogger(__name__)

_RECURRENT: tuple[type[keras.layers.Layer], ...] = (
    keras.layers.LSTM,
    keras.layers.GRU,
    keras.layers.SimpleRNN,
)
_PER_STEP: tuple[type[keras.layers.Layer], ...] = (
    keras.layers.Dense,
    keras.layers.Activation,
    keras.layers.LayerNormalization,
    keras.layers.BatchNormalization,
    keras.layers.Normalization,
    keras.layers.Rescaling,
)
_IDENTITY: tuple[type[keras.layers.Layer], ...] = (keras.layers.InputLayer, keras.layers.Dropout)
KERNELS = BACKENDS[1:]  # what "auto" resolves to

# "seq": apply to [B, T, dim]; "flat": apply to [B*T, dim] because the original saw one
# vector per row; "masking": a Masking layer; "recurrent": run the layer's cell over time.
_Kind = Literal["seq", "flat", "masking", "recurrent"]


@dataclass(frozen=True)
class _Stage:
    kind: _Kind
    layer: keras.layers.Layer


class StreamingTwin:
    """Runs a recurrent model step by step with an explicit, flat, per-row state."""

    def __init__(
        self,
        stages: list[_Stage],
        layer_names: list[str],
        features: int,
        backend: str = "tf",
    ) -> None:
        self._stages = stages
        self._layer_names = layer_names
        self._features = features
        self._state_sizes = [size for stage in stages if stage.kind == "recurrent" for size in _sizes(stage.layer)]
        self._state_dim = sum(self._state_sizes)
        self._numpy = _fused_step(stages, backend) or _numpy_step(stages, backend)
        self.backend = self._numpy.name if self._numpy else ("tf" if backend == "auto" else backend)
        # XLA compiles once per distinct shape: pad to power-of-two buckets to bound that.
        self._bucketed = self.backend == "xla"
        self._functions: list[Any] = []
        if self._numpy:
            self._output_dim = int(self._numpy(*self._zeros(1, 1))[0].shape[-1])
            return
        # Two fixed signatures, so no retracing per batch size: any number of steps, and
        # exactly one step, which skips the time loop (most rounds have one event per key).
        self._functions = [self._compile(steps, features) for steps in (None, 1)]
        self._concrete, self._concrete_one_step = (f.get_concrete_function() for f in self._functions)
        self._output_dim = int(self._concrete.structured_outputs[0].shape[-1])

    def _zeros(self, batch: int, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.zeros((batch, steps, self._features), np.float32)
        return x, np.ones((batch, steps), bool), self.zero_state(batch)

    def _compile(self, steps: int | None, features: int) -> Any:
        return tf.function(
            self._forward,
            input_signature=[
                tf.TensorSpec([None, steps, features], tf.float32, name="x"),
                tf.TensorSpec([None, steps], tf.bool, name="mask"),
                tf.TensorSpec([None, self._state_dim], tf.float32, name="state"),
            ],
            autograph=False,
            jit_compile=self._bucketed,
        )

    @classmethod
    def from_model(cls, model: keras.Model, backend: str = "auto") -> StreamingTwin:
        """Check that `model` can be served one step at a time and build its twin.

        backend "numpy" runs keras' formulas in NumPy (no per-call framework cost); "fused"
        too, but each recurrent cell's element-wise part in one compiled pass (numba); "tf"
        runs the TensorFlow graph; "xla" jit-compiles it, which compiles once per
        power-of-two bucket of batch size and length; "auto" is fused when numba imports and
        every layer has a fused form, else numpy when every layer has a NumPy form, else tf.
        """
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
        features = _input_features(model)
        chain = _linear_chain(model)
        twin = cls(_plan(chain), [layer.name for layer in chain], features, backend)
        log.info(
            "streaming twin of model %r (%s): layers %s, state sizes %s",
            model.name,
            twin.backend,
            twin.layer_names,
            twin.state_sizes,
        )
        return twin

    @property
    def features(self) -> int:
        return self._features

    @property
    def output_dim(self) -> int:
        return self._output_dim

    @property
    def state_sizes(self) -> list[int]:
        """Sizes of the state tensors in layer order (LSTM: h then c; GRU, SimpleRNN: h)."""
        return list(self._state_sizes)

    @property
    def state_dim(self) -> int:
        return self._state_dim

    @property
    def layer_names(self) -> list[str]:
        return list(self._layer_names)

    @property
    def tracing_count(self) -> int:
        """How often the step functions were traced; stays 2 (tf, xla) whatever the batch shapes."""
        return sum(int(f.experimental_get_tracing_count()) for f in self._functions)

    def zero_state(self, batch: int) -> np.ndarray:
        """The state of entities that have seen no step yet."""
        return np.zeros((batch, self._state_dim), dtype=np.float32)

    def step(self, x: np.ndarray, mask: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance every row over its valid steps; return outputs and the new state.

        x is [B, T, F] float32, mask [B, T] bool (True on a prefix of each row), state
        [B, S] float32. Outputs are [B, T, output_dim]; those at masked steps are
        unspecified. The new state of a row is its state after its last valid step.
        """
        x = np.asarray(x, dtype=np.float32)
        mask = np.asarray(mask, dtype=bool)
        state = np.asarray(state, dtype=np.float32)
        self._check_shapes(x, mask, state)
        if self._numpy:
            return self._numpy(x, mask, state)
        batch, steps = mask.shape
        if self._bucketed:
            x, mask, state = _pad_to_bucket(x, mask, state)
        function = self._concrete_one_step if x.shape[1] == 1 else self._concrete
        y, new_state = function(tf.constant(x), tf.constant(mask), tf.constant(state))
        return y.numpy()[:batch, :steps], new_state.numpy()[:batch]

    def _check_shapes(self, x: np.ndarray, mask: np.ndarray, state: np.ndarray) -> None:
        """Fail with the expected shapes instead of a TensorFlow shape error."""
        if x.ndim != 3 or x.shape[2] != self._features or x.shape[1] == 0:
            raise ValueError(f"x must be [B, T>=1, {self._features}], got {x.shape}")
        batch, steps = x.shape[:2]
        if mask.shape != (batch, steps):
            raise ValueError(f"mask must be {(batch, steps)}, got {mask.shape}")
        if state.shape != (batch, self._state_dim):
            raise ValueError(f"state must be {(batch, self._state_dim)}, got {state.shape}")

    def _forward(self, x: tf.Tensor, mask: tf.Tensor, state: tf.Tensor) -> tuple[Any, Any]:
        """The traced computation: the chain applied to every step, state carried."""
        carried = tf.split(state, self._state_sizes, axis=1)
        new_states: list[tf.Tensor] = []
        h = x
        for stage in self._stages:
            if stage.kind == "masking":
                mask = tf.logical_and(mask, stage.layer.compute_mask(h))
                h = stage.layer(h)
            elif stage.kind == "seq":
                h = stage.layer(h, training=False)
            elif stage.kind == "flat":
                h = _apply_per_row(stage.layer, h)
            else:
                count = len(_sizes(stage.layer))
                initial, carried = carried[:count], carried[count:]
                h, final = _run_recurrent(stage.layer, h, mask, initial)
                new_states.extend(final)
        return tf.cast(h, tf.float32), tf.concat(new_states, axis=1)


def _fused_step(stages: list[_Stage], backend: str) -> NumpyStep | None:
    """The fused kernel when asked for or when "auto" finds numba and a fused form of every layer."""
    if backend not in ("auto", "fused"):
        return None
    # numba is a dependency: the import fails in a broken install (e.g. no llvmlite for the CPU), or
    # where NumPy runs on a BLAS other than its wheel's OpenBLAS, whose sgemm the layer loops call
    try:
        from worker.model.fused_step import FusedStep, NoFusedFormError
    except ImportError as exc:
        if backend == "fused":
            raise ModelError(f"backend fused does not load: {exc}; use numpy") from exc
        log.info("not serving with the fused step: it does not load (%s)", exc)
        return None
    try:
        return FusedStep([(stage.kind, stage.layer) for stage in stages])
    except NoFusedFormError as exc:
        if backend == "fused":
            raise ModelError(f"backend fused cannot serve this model: {exc} has no fused form; use numpy") from exc
        log.info("not serving with the fused step: %s has no fused form", exc)
    except NoNumpyFormError as exc:
        if backend == "fused":
            raise ModelError(f"backend fused cannot serve this model: {exc} has no NumPy form; use tf") from exc
    return None


def _numpy_step(stages: list[_Stage], backend: str) -> NumpyStep | None:
    """The NumPy kernel when asked for or when "auto" finds a NumPy form of every layer."""
    if backend not in ("auto", "numpy"):
        return None
    try:
        return NumpyStep([(stage.kind, stage.layer) for stage in stages])
    except NoNumpyFormError as exc:
        if backend == "numpy":
            raise ModelError(f"backend numpy cannot serve this model: {exc} has no NumPy form; use tf") from exc
        log.info("serving with TensorFlow: %s has no NumPy form", exc)
        return None


def _run_recurrent(
    layer: keras.layers.Layer, x: tf.Tensor, mask: tf.Tensor, initial: list[tf.Tensor]
) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """Run the layer's own cell over time; masked steps keep the state.

    Not keras' RNN loop: it evaluates one extra cell step per call just to learn the
    output shape, and emits zeros (not the carried h) at masked steps before a row's
    first valid step. A masked step outputs the carried h, as keras does at later
    masked steps, or zeros when the layer was built with zero_output_for_mask.
    """
    cell = layer.cell
    if x.shape[1] == 1:  # one step (the common round): no time loop to build or run
        _, new = cell(x[:, 0], list(initial), training=False)
        valid = mask[:, 0:1]
        kept = [tf.where(valid, n, s) for n, s in zip(keras.tree.flatten(new), initial, strict=True)]
        out = tf.where(valid, kept[0], 0.0) if layer.zero_output_for_mask else kept[0]
        return out[:, tf.newaxis], kept
    steps_first = tf.transpose(x, [1, 0, 2])
    mask_first = tf.transpose(mask)[:, :, tf.newaxis]
    steps = tf.shape(steps_first)[0]
    outputs = tf.TensorArray(x.dtype, size=steps, element_shape=tf.TensorShape([None, cell.output_size]))

    def body(t: tf.Tensor, outputs: tf.TensorArray, *states: tf.Tensor) -> tuple[Any, ...]:
        _, new = cell(steps_first[t], list(states), training=False)
        kept = [tf.where(mask_first[t], n, s) for n, s in zip(keras.tree.flatten(new), states, strict=True)]
        out = tf.where(mask_first[t], kept[0], 0.0) if layer.zero_output_for_mask else kept[0]
        return (t + 1, outputs.write(t, out), *kept)

    _, outputs, *final = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), outputs, *initial))
    return tf.transpose(outputs.stack(), [1, 0, 2]), final


def _apply_per_row(layer: keras.layers.Layer, h: tf.Tensor) -> tf.Tensor:
    """Apply a layer that saw [batch, dim] in the original to every step of [B, T, dim]."""
    shape = tf.shape(h)
    flat = layer(tf.reshape(h, [-1, h.shape[-1]]), training=False)
    return tf.reshape(flat, tf.concat([shape[:2], [flat.shape[-1]]], axis=0))


def _pad_to_bucket(x: np.ndarray, mask: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad batch and time up to powers of two with masked rows and steps."""
    batch, steps = mask.shape
    rows = 1 << (batch - 1).bit_length()
    cols = 1 << (steps - 1).bit_length()
    if (rows, cols) == (batch, steps):
        return x, mask, state
    return (
        np.pad(x, ((0, rows - batch), (0, cols - steps), (0, 0))),
        np.pad(mask, ((0, rows - batch), (0, cols - steps))),
        np.pad(state, ((0, rows - batch), (0, 0))),
    )


def _sizes(layer: keras.layers.Layer) -> list[int]:
    return [int(size) for size in keras.tree.flatten(layer.cell.state_size)]


def _describe(layer: keras.layers.Layer) -> str:
    return f"layer {layer.name!r} ({type(layer).__name__})"


def _refuse(layer: keras.layers.Layer, why: str) -> ModelError:
    return ModelError(f"{_describe(layer)} is not supported: {why}")


def _input_features(model: keras.Model) -> int:
    """The feature count of the single (batch, time, features) input."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except AttributeError as exc:
        raise ModelError(
            f"model {model.name!r} has no defined inputs: only Sequential and functional "
            "models built on keras.Input can be served"
        ) from exc
    if inputs is None or len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"model {model.name!r} must have exactly one input and one output")
    shape = inputs[0].shape
    if len(shape) != 3 or shape[2] is None:
        raise ModelError(f"model {model.name!r} input must be (batch, time, features) with known features, got {shape}")
    return int(shape[2])


def _linear_chain(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers in order, provided each one only takes the previous output."""
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    chain: list[keras.layers.Layer] = []
    tensor = model.outputs[0]
    while True:
        layer, node_index, _ = tensor._keras_history
        if isinstance(layer, keras.layers.InputLayer):
            break
        inputs = keras.tree.flatten(layer._inbound_nodes[node_index].input_tensors)
        if len(inputs) != 1:
            raise _refuse(layer, f"it takes {len(inputs)} inputs; only linear chains are")
        chain.append(layer)
        tensor = inputs[0]
    chain.reverse()
    return chain


def _plan(chain: Sequence[keras.layers.Layer]) -> list[_Stage]:
    """Decide how each layer runs in the twin, refusing what cannot run per step."""
    stages: list[_Stage] = []
    rank = 3
    for layer in chain:
        kind = type(layer)
        if kind in _RECURRENT:
            _check_recurrent(layer, rank)
            stages.append(_Stage("recurrent", layer))
            rank = 3 if layer.return_sequences else 2
        elif kind is keras.layers.Masking:
            if any(stage.kind in ("recurrent", "masking") for stage in stages):
                raise _refuse(layer, "Masking must come before the first recurrent layer")
            stages.append(_Stage("masking", layer))
        elif kind in _IDENTITY:
            continue
        elif kind is keras.layers.TimeDistributed:
            stages.extend(_plan_time_distributed(layer, rank))
        elif kind in _PER_STEP:
            _check_axes(layer, rank)
            stages.append(_Stage("seq" if rank == 3 else "flat", layer))
        else:
            raise _refuse(layer, "it looks beyond the current step or is not a known layer")
    if not any(stage.kind == "recurrent" for stage in stages):
        raise ModelError("the model has no LSTM, GRU or SimpleRNN layer: no state to carry")
    return stages


def _plan_time_distributed(layer: keras.layers.Layer, rank: int) -> list[_Stage]:
    """TimeDistributed(inner) is the inner layer applied to each step's vector."""
    inner = layer.layer
    if rank != 3:
        raise _refuse(layer, "its input is not a sequence")
    if type(inner) in _IDENTITY:
        return []
    if type(inner) not in _PER_STEP:
        raise _refuse(layer, f"it wraps {_describe(inner)}, which is not a per-step layer")
    _check_axes(inner, 2)
    return [_Stage("flat", inner)]


def _check_recurrent(layer: keras.layers.Layer, rank: int) -> None:
    if rank != 3:
        raise _refuse(layer, "its input is not a sequence")
    if layer.go_backwards:
        raise _refuse(layer, "go_backwards=True reads the sequence from its end")
    if layer.stateful:
        raise _refuse(layer, "stateful=True keeps state inside the layer; the twin carries it")
    if layer.return_state:
        raise _refuse(layer, "return_state=True does not form a linear chain")
    if layer.compute_dtype != "float32":
        raise _refuse(layer, f"it computes in {layer.compute_dtype}; state is carried as float32")


def _check_axes(layer: keras.layers.Layer, rank: int) -> None:
    """Normalization must act on the feature axis only, or it mixes steps or rows."""
    if isinstance(layer, keras.layers.LayerNormalization):
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    elif isinstance(layer, keras.layers.BatchNormalization):
        axes = [layer.axis]
    elif isinstance(layer, keras.layers.Normalization):
        axes = list(layer.axis) or [rank - 1]
    else:
        return
    if sorted({int(axis) % rank for axis in axes}) != [rank - 1]:
        raise _refuse(layer, f"axis {axes} is not the feature axis of a rank-{rank} input")
