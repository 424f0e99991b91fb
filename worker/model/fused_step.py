"""The twin's step with each recurrent cell fused: the products by BLAS, the rest in one pass.

Per layer and step, [x, h] @ [W; U] (GRU: x @ W and h @ U) is one BLAS product into a buffer
kept across calls, and one compiled loop (worker/model/fused_kernels.py) applies the gates,
the activations and the state update, writing the new state and the output once
(docs/performance.md, "Fused step"). Per-step layers, the masking and the rows' order are
NumpyStep's. A cell activation without an element-wise form (softmax) raises NoFusedFormError;
the twin then serves with NumpyStep.
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
        """A scratch array of at least `rows` rows, kept across calls."""
        held = self._scratch.get(name)
        if held is None or len(held) < rows:
            held = self._scratch[name] = np.empty((rows, width), np.float32)
        return held

    def run(self, x: Array, mask: Array, states: list[Array]) -> tuple[Array, list[Array]]:
        """Outputs [B, T, units] and the states after each row's last valid step, as
        NumpyStep's layers give them: masked or padded steps keep the state."""
        batch, steps = mask.shape
        features, n = x.shape[2], self.units
        out = np.empty((batch, steps, n), np.float32)
        # [x, h] and c are scratch kept across calls (no fresh pages per round): the states
        # returned are views of them, which NumpyStep copies out before the next call
        xh = self._buffer("xh", batch, features + n)[:batch]
        xh[:, features:] = states[0]
        c = None
        if self.kind == "LSTM":
            c = self._buffer("c", batch, n)[:batch]
            c[:] = states[1]
        mask = np.ascontiguousarray(mask)
        prefix = _prefix_rows(mask)
        for t in range(steps):
            rows = prefix[t] if prefix is not None else batch
            xh[:rows, :features] = x[:rows, t]
            self._step(xh, c, rows, mask, t, out)
        h = xh[:, features:]
        return out, [h, c] if c is not None else [h]

    def _step(self, xh: Array, c: Array | None, rows: int, mask: Array, t: int, out: Array) -> None:
        n, batch = self.units, len(xh)
        if not self.gru:
            z = self._buffer("z", batch, self.kernel.shape[1])
            np.matmul(xh[:rows], self.kernel, out=z[:rows])
            if c is not None:
                k.lstm_cells(
                    z.reshape(-1, 4, n), self.bias, rows, mask, t, self.zero_output, xh, c, out, self.act, self.rec
                )
            else:
                k.simple_cells(z, self.bias[0], rows, mask, t, self.zero_output, xh, out, self.act)
            return
        features = xh.shape[1] - n
        xw = self._buffer("xw", batch, 3 * n)
        hu = self._buffer("hu", batch, self.recurrent.shape[1])
        np.matmul(xh[:rows, :features], self.kernel, out=xw[:rows])
        np.matmul(xh[:rows, features:], self.recurrent, out=hu[:rows])
        xw3, hu3 = xw.reshape(-1, 3, n), hu.reshape(len(hu), -1, n)
        if self.reset_after:
            k.gru_cells(
                xw3, hu3, self.bias, self.rec_bias, rows, mask, t, self.zero_output, xh, out, self.act, self.rec
            )
            return
        rh, rhu = self._buffer("rh", batch, n), self._buffer("rhu", batch, n)
        k.gru_reset_gates(xw3, hu3, self.bias, rows, xh, rh, self.rec)
        np.matmul(rh[:rows], self.candidate, out=rhu[:rows])
        k.gru_reset_update(xw3, rhu, self.bias, rows, mask, t, self.zero_output, xh, out, self.act)


class FusedStep(NumpyStep):
    """NumpyStep with every recurrent layer fused; the same inputs, outputs and state layout."""

    name = "fused"
    recurrent = _FusedRecurrent
