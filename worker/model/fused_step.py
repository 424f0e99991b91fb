"""The twin's step with each recurrent cell fused: the products by BLAS, the rest in one pass.

Per layer and step, [x, h] @ [W; U] (GRU: x @ W and h @ U) is one BLAS product into a buffer
kept across calls, and one compiled loop applies the gates, the activations and the state
update, writing the new state and the output once; a layer's steps are one compiled call
without the GIL (worker/model/fused_kernels.py; docs/performance.md, "Fused step"). Per-step
layers, the masking and the rows' order are NumpyStep's. A cell activation without an
element-wise form (softmax) raises NoFusedFormError; the twin then serves with NumpyStep.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from worker.model import fused_kernels as k
from worker.model.numpy_step import NumpyStep, _array, _prefix_rows, activation_name

Array = np.ndarray


class NoFusedFormError(Exception):
    """The layer has a NumPy form but no fused one."""


def _code(fn: Any, owner: keras.layers.Layer) -> int:
    name = activation_name(fn)
    if name not in k.CODES:
        raise NoFusedFormError(f"activation {name!r} of layer {owner.name!r}")
    return k.CODES[name]


class _FusedRecurrent:
    """One LSTM, GRU or SimpleRNN layer, stepped by a BLAS product and a fused kernel."""

    def __init__(self, layer: keras.layers.Layer) -> None:
        cell = layer.cell
        n = self.units = int(cell.units)
        self.kind = type(layer).__name__
        self.state_count = 2 if self.kind == "LSTM" else 1
        self.zero_output = bool(layer.zero_output_for_mask)
        self.act = _code(cell.activation, layer)
        self.rec = _code(getattr(cell, "recurrent_activation", cell.activation), layer)
        kernel, recurrent = _array(cell.kernel), _array(cell.recurrent_kernel)
        self.gru = self.kind == "GRU"
        self.reset_after = self.gru and bool(cell.reset_after)
        width = kernel.shape[1]  # blocks of keras' column order: LSTM i, f, g, o; GRU z, r, h
        bias = _array(cell.bias) if cell.use_bias else np.zeros((2, width) if self.reset_after else width, np.float32)
        self.rec_bias = np.zeros((3, n), np.float32)  # GRU(reset_after)'s only
        if self.reset_after:  # the recurrent bias is inside r * (h @ U + b_rec): a bias of its own
            bias, self.rec_bias = bias[0], np.ascontiguousarray(bias[1].reshape(-1, n))
        self.bias = np.ascontiguousarray(bias.reshape(-1, n))
        if self.gru:
            self.kernel = kernel
            split = 3 * n if self.reset_after else 2 * n  # reset before: the candidate's product takes r * h
            self.recurrent = np.ascontiguousarray(recurrent[:, :split])
            self.candidate = np.ascontiguousarray(recurrent[:, split:])  # no columns with reset_after
        else:
            self.kernel = np.concatenate([kernel, recurrent])  # [x, h] @ [W; U]: one product
        self._scratch: dict[str, Array] = {}

    def _buffer(self, name: str, rows: int, width: int) -> Array:
        """`rows` rows of a scratch array kept across calls (C-contiguous: whole rows)."""
        held = self._scratch.get(name)
        if held is None or len(held) < rows:
            held = self._scratch[name] = np.empty((rows, width), np.float32)
        return held[:rows]

    def run(self, x: Array, mask: Array, states: list[Array]) -> tuple[Array, list[Array]]:
        """Outputs [B, T, units] and the states after each row's last valid step, as
        NumpyStep's layers give them: masked or padded steps keep the state. Every step in
        one compiled call, which holds no GIL."""
        batch, steps = mask.shape
        features, n = x.shape[2], self.units
        out = np.empty((batch, steps, n), np.float32)
        # [x, h], c and the products are scratch kept across calls (no fresh pages per round): the
        # states returned are views of them, which NumpyStep copies out before the next call
        xh = self._buffer("xh", batch, features + n)
        xh[:, features:] = states[0]
        x, mask = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(mask)
        prefix = _prefix_rows(mask)  # per step, how many rows (the first ones) have an event
        rows = np.array(prefix if prefix is not None else [batch] * steps, np.int64)
        if self.kind == "LSTM":
            c = self._buffer("c", batch, n)
            c[:] = states[1]
            z = self._buffer("z", batch, self.kernel.shape[1])
            k.lstm_layer(x, rows, mask, self.kernel, self.bias, self.zero_output, xh, c, z, out, self.act, self.rec)
            return out, [xh[:, features:], c]
        if not self.gru:
            z = self._buffer("z", batch, self.kernel.shape[1])
            k.simple_layer(x, rows, mask, self.kernel, self.bias[0], self.zero_output, xh, z, out, self.act)
            return out, [xh[:, features:]]
        k.gru_layer(
            x, rows, mask, self.kernel, self.recurrent, self.candidate, self.bias, self.rec_bias,
            self.reset_after, self.zero_output, xh,
            self._buffer("xw", batch, 3 * n), self._buffer("hu", batch, self.recurrent.shape[1]),
            self._buffer("rh", batch, n), self._buffer("rhu", batch, n), out, self.act, self.rec,
        )  # fmt: skip
        return out, [xh[:, features:]]


class FusedStep(NumpyStep):
    """NumpyStep with every recurrent layer fused; the same inputs, outputs and state layout."""

    name = "fused"
    recurrent = _FusedRecurrent
