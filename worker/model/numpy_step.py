"""The twin's step in plain NumPy: the model's arithmetic without TensorFlow's per-call cost.

A TensorFlow call has a fixed cost before any arithmetic and spreads small matrices over
threads, which dominates at live round sizes (docs/performance.md, "Step kernel").

Each layer's weights are read once and the formulas are keras' own (gate order, bias
layout, reset_after); results differ from TensorFlow's only by float32 rounding order.
A layer or activation without a NumPy form raises `NoNumpyFormError`, and the twin then
serves with TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

Array = np.ndarray
_Apply = Callable[[Array], Array]


class NoNumpyFormError(Exception):
    """The layer is served correctly by TensorFlow but has no NumPy form here."""


def _sigmoid_of_negated(minus_x: Array) -> Array:
    """sigmoid(x) = 1 / (1 + exp(-x)) from -x, in place; exp's overflow to inf gives 0 exactly.
    NumPy's float32 exp is cheaper than its tanh, so both activations come from exp
    (docs/performance.md, "Activations from exp")."""
    np.exp(minus_x, out=minus_x)
    minus_x += 1.0
    return np.reciprocal(minus_x, out=minus_x)


def _tanh_of_minus_double(minus_2x: Array) -> Array:
    """tanh(x) = 2 / (1 + exp(-2x)) - 1 from -2x, in place: within 2e-7 of np.tanh, and -1
    exactly where exp overflows."""
    np.exp(minus_2x, out=minus_2x)
    minus_2x += 1.0
    np.divide(2.0, minus_2x, out=minus_2x)
    minus_2x -= 1.0
    return minus_2x


def _sigmoid(x: Array) -> Array:
    return _sigmoid_of_negated(np.negative(x))


def _tanh(x: Array) -> Array:
    return _tanh_of_minus_double(np.multiply(x, -2.0))


def _softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


_ACTIVATIONS: dict[str, _Apply] = {
    "linear": lambda x: x,
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "relu": lambda x: np.maximum(x, 0.0),
    "hard_sigmoid": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "softmax": _softmax,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "softplus": lambda x: np.logaddexp(x, np.float32(0.0)),
    "exponential": np.exp,
}


def activation_name(fn: Any) -> str:
    """The keras name of an activation function, which the kernels' forms are keyed by."""
    return getattr(fn, "__name__", repr(fn))


def _activation(fn: Any, owner: keras.layers.Layer) -> _Apply:
    name = activation_name(fn)
    if name not in _ACTIVATIONS:
        raise NoNumpyFormError(f"activation {name!r} of layer {owner.name!r}")
    return _ACTIVATIONS[name]


def _array(weight: Any) -> Array:
    return np.ascontiguousarray(keras.ops.convert_to_numpy(weight), dtype=np.float32)


class _Recurrent:
    """One LSTM, GRU or SimpleRNN layer: its cell applied step by step, masked steps kept."""

    def __init__(self, layer: keras.layers.Layer) -> None:
        cell = layer.cell
        self.units = int(cell.units)
        self.kind = type(layer).__name__
        self.zero_output_for_mask = bool(layer.zero_output_for_mask)
        self.act = _activation(cell.activation, layer)
        self.rec_act = _activation(getattr(cell, "recurrent_activation", cell.activation), layer)
        kernel, recurrent = _array(cell.kernel), _array(cell.recurrent_kernel)
        bias = _array(cell.bias) if cell.use_bias else None
        self.reset_after = bool(getattr(cell, "reset_after", False))
        if self.kind == "GRU" and self.reset_after:
            # GRU(reset_after) adds the recurrent bias inside r * (h @ U + b_rec): two matmuls.
            self.kernel, self.recurrent = kernel, recurrent
            width = kernel.shape[1]
            self.bias = bias[0] if bias is not None else np.zeros(width, np.float32)
            self.recurrent_bias = bias[1] if bias is not None else np.zeros(width, np.float32)
        elif self.kind == "GRU":
            # reset before: h's projection is split, candidate part multiplies r * h.
            n = self.units
            self.kernel, self.recurrent = kernel, np.ascontiguousarray(recurrent[:, : 2 * n])
            self.candidate = np.ascontiguousarray(recurrent[:, 2 * n :])
            self.bias = bias if bias is not None else np.zeros(kernel.shape[1], np.float32)
        else:
            # LSTM and SimpleRNN: x @ W + h @ U + b as one product of [x, h] and [W; U].
            fused = np.concatenate([kernel, recurrent])
            fused_bias = bias if bias is not None else np.zeros(kernel.shape[1], np.float32)
            if self.kind == "LSTM":
                self._gates_and_candidate(fused, fused_bias)
            else:
                self.fused, self.bias = fused, fused_bias
        self.state_count = 2 if self.kind == "LSTM" else 1

    def _gates_and_candidate(self, fused: Array, bias: Array) -> None:
        """LSTM columns split into the gates i, f, o (keras: i, f, g, o) and the candidate g,
        each a product of its own, with the bias as the last row: [x, h, 1] @ [W; U; b].
        Column slices of one product are strided, and NumPy's passes over them are slower than
        over whole arrays; the bias row saves a pass (docs/performance.md, "LSTM products").
        With sigmoid gates their columns are negated, and with a tanh candidate its columns
        doubled and negated (both exact in floating point), so that each activation starts
        with its exp in place, without a pass to scale."""
        n = self.units
        with_bias = np.concatenate([fused, bias[None, :]])
        gates = np.concatenate([with_bias[:, : 2 * n], with_bias[:, 3 * n :]], axis=1)
        candidate = with_bias[:, 2 * n : 3 * n]
        self.gate_act = self.rec_act
        if self.rec_act is _sigmoid:
            gates = -gates
            self.gate_act = _sigmoid_of_negated
        if self.act is _tanh:
            candidate = candidate * -2.0
        self.gate_kernel = np.ascontiguousarray(gates)
        self.candidate_kernel = np.ascontiguousarray(candidate)
        self._xh1 = np.ones((0, 0), np.float32)

    def _with_ones(self, x: Array, h: Array) -> Array:
        """[x, h, 1]: the bias row of the LSTM's kernels multiplies the ones column. Written
        into a buffer kept across calls (its ones column stays), used only until both
        products are taken."""
        rows, width = x.shape
        if len(self._xh1) < rows:
            self._xh1 = np.ones((rows, width + self.units + 1), np.float32)
        xh1 = self._xh1[:rows]
        xh1[:, :width] = x
        xh1[:, width:-1] = h
        return xh1

    def cell(self, x: Array, states: list[Array]) -> list[Array]:
        """One step of every row; returns the new states (h first)."""
        n = self.units
        if self.kind == "LSTM":
            h, c = states
            xh1 = self._with_ones(x, h)
            gates = self.gate_act(xh1 @ self.gate_kernel)
            i, f, o = gates[:, :n], gates[:, n : 2 * n], gates[:, 2 * n :]
            c_new = f * c
            candidate = xh1 @ self.candidate_kernel
            if self.act is _tanh:  # in place: fewer arrays allocated per step
                candidate = _tanh_of_minus_double(candidate)  # its kernel is -2 times keras'
                candidate *= i
                c_new += candidate
                h_new = _tanh(c_new)
                h_new *= o
                return [h_new, c_new]
            c_new += i * self.act(candidate)
            return [o * self.act(c_new), c_new]
        if self.kind == "SimpleRNN":
            z = np.concatenate([x, states[0]], axis=1) @ self.fused
            z += self.bias
            return [self.act(z)]
        h = states[0]
        x_proj = x @ self.kernel
        x_proj += self.bias
        if self.reset_after:
            inner = h @ self.recurrent
            inner += self.recurrent_bias
        else:
            inner = h @ self.recurrent
        z = self.rec_act(x_proj[:, :n] + inner[:, :n])
        r = self.rec_act(x_proj[:, n : 2 * n] + inner[:, n : 2 * n])
        recurrent_h = r * inner[:, 2 * n :] if self.reset_after else (r * h) @ self.candidate
        hh = self.act(x_proj[:, 2 * n :] + recurrent_h)
        return [z * h + (1.0 - z) * hh]

    def run(self, x: Array, mask: Array, states: list[Array]) -> tuple[Array, list[Array]]:
        """Outputs [B, T, units] and the states after each row's last valid step."""
        batch, steps = mask.shape
        out = np.empty((batch, steps, self.units), np.float32)
        prefix, owned = _prefix_rows(mask), False
        for t in range(steps):
            valid = mask[:, t]
            rows = prefix[t] if prefix is not None else -1
            if rows == batch or (rows < 0 and valid.all()):
                states, owned = self.cell(x[:, t], states), True
                out[:, t] = states[0]
                continue
            if rows >= 0:  # the rows with an event are the first ones: step only those
                if not owned:  # the caller's arrays
                    states, owned = [s.copy() for s in states], True
                new = self.cell(x[:rows, t], [s[:rows] for s in states])
                for s, n in zip(states, new, strict=True):
                    s[:rows] = n
                out[:rows, t] = new[0]
                out[rows:, t] = 0.0 if self.zero_output_for_mask else states[0][rows:]
                continue
            new = self.cell(x[:, t], states)
            keep = valid[:, None]
            states = [np.where(keep, n, s) for n, s in zip(new, states, strict=True)]
            out[:, t] = np.where(keep, states[0], 0.0) if self.zero_output_for_mask else states[0]
        return out, states


def _prefix_rows(mask: Array) -> list[int] | None:
    """Per step, how many rows have an event when those are always the first rows (each row's
    events from step 0, rows longest first, as the batcher packs a round); else None. Stepping
    only those rows skips the padding's arithmetic and the masked merge of the states."""
    steps = mask.shape[1]
    lengths = mask.sum(axis=1)
    if steps == 1 or (np.diff(lengths) > 0).any():
        return None
    if not (mask == (np.arange(steps)[None, :] < lengths[:, None])).all():
        return None
    return [int(n) for n in (lengths[None, :] > np.arange(steps)[:, None]).sum(axis=1)]


def _per_step(layer: keras.layers.Layer) -> _Apply:
    """A layer acting on the last axis of each step's vector."""
    kind = type(layer).__name__
    if kind == "Dense":
        kernel = _array(layer.kernel)
        bias = _array(layer.bias) if layer.use_bias else None
        act = _activation(layer.activation, layer)

        def dense(h: Array) -> Array:
            y = h @ kernel
            if bias is not None:
                y += bias
            return act(y)

        return dense
    if kind == "Activation":
        return _activation(layer.activation, layer)
    if kind == "Rescaling":
        scale, offset = np.float32(layer.scale), np.float32(layer.offset)
        return lambda h: h * scale + offset
    if kind == "Normalization":
        if layer.invert:
            raise NoNumpyFormError(f"Normalization(invert=True) of layer {layer.name!r}")
        mean = _array(layer.mean).reshape(-1)
        std = np.maximum(np.sqrt(_array(layer.variance).reshape(-1)), np.float32(keras.config.epsilon()))
        return lambda h: (h - mean) / std
    if kind == "BatchNormalization":
        inv = 1.0 / np.sqrt(_array(layer.moving_variance) + np.float32(layer.epsilon))
        if layer.scale:
            inv = inv * _array(layer.gamma)
        shift = -_array(layer.moving_mean) * inv
        if layer.center:
            shift = shift + _array(layer.beta)
        return lambda h: h * inv + shift
    if kind == "LayerNormalization":
        return _layer_norm(layer)
    raise NoNumpyFormError(f"layer {layer.name!r} ({kind})")


def _layer_norm(layer: keras.layers.Layer) -> _Apply:
    if getattr(layer, "rms_scaling", False):
        raise NoNumpyFormError(f"LayerNormalization(rms_scaling=True) of layer {layer.name!r}")
    gamma = _array(layer.gamma) if layer.scale else None
    beta = _array(layer.beta) if layer.center else None
    epsilon = np.float32(layer.epsilon)

    def normalize(h: Array) -> Array:
        mean = h.mean(axis=-1, keepdims=True)
        centred = h - mean
        y = centred / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + epsilon)
        if gamma is not None:
            y *= gamma
        if beta is not None:
            y += beta
        return y

    return normalize


class NumpyStep:
    """The twin's stages as NumPy functions: [B, T, F] steps and [B, S] states in and out."""

    name = "numpy"  # the twin's backend
    # how a recurrent layer is run: its `run(x, mask, states)`, `units` and `state_count`
    recurrent: Callable[[keras.layers.Layer], Any] = _Recurrent

    def __init__(self, stages: Sequence[tuple[str, keras.layers.Layer]]) -> None:
        self._plan: list[tuple[str, Any]] = []
        for kind, layer in stages:
            if kind == "recurrent":
                self._plan.append((kind, self.recurrent(layer)))
            elif kind == "masking":
                self._plan.append((kind, np.float32(layer.mask_value)))
            else:
                self._plan.append((kind, _per_step(layer)))

    def __call__(self, x: Array, mask: Array, state: Array) -> tuple[Array, Array]:
        offset, new_states, h = 0, [], x
        with np.errstate(over="ignore", under="ignore"):
            for kind, part in self._plan:
                if kind == "masking":
                    kept = (h != part).any(axis=-1)
                    mask = mask & kept
                    h = h * kept[..., None]
                elif kind == "recurrent":
                    carried = []
                    for _ in range(part.state_count):
                        carried.append(state[:, offset : offset + part.units])
                        offset += part.units
                    h, final = part.run(h, mask, carried)
                    new_states.extend(final)
                else:
                    h = part(h)
        return h.astype(np.float32, copy=False), np.concatenate(new_states, axis=1)
