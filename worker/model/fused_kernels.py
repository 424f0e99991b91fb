"""The element-wise part of each recurrent cell as one compiled pass over a round's rows.

NumPy takes about ten passes over memory per layer for the gates, the activations and the
state update; these loops read each pre-activation once and write each state once
(docs/performance.md, "Fused step"). Every kernel is compiled for its one signature when this
module is imported (eagerly, before the worker joins its group) and cached on disk, so no round
compiles and a restart loads the machine code. Arrays are C-contiguous and rows are indexed
whole (z[r, gate] is a row of `units`): the inner loops then vectorize.

Rows at or past `rows`, or masked at step t, keep their state and output their h (or zeros with
zero_output_for_mask), as keras does at a masked step. The *_layer loops run every step of a
layer, the products by the sgemm of NumPy's OpenBLAS, so that a round's step holds no GIL
within a layer.
"""

from __future__ import annotations

import ctypes
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import llvmlite.binding
import numba
import numpy as np
from numba import types

log = logging.getLogger(__name__)

# activation codes, by keras name; softmax mixes a row's units and has no element-wise form
CODES = {
    "linear": 0,
    "tanh": 1,
    "sigmoid": 2,
    "relu": 3,
    "hard_sigmoid": 4,
    "softsign": 5,
    "softplus": 6,
    "exponential": 7,
}
TANH, SIGMOID = CODES["tanh"], CODES["sigmoid"]

_F = np.float32
_ZERO, _HALF, _ONE, _SIX = _F(0.0), _F(0.5), _F(1.0), _F(6.0)
# tanh as Eigen's (TensorFlow's CPU kernel's) rational function: within 4e-7 of tanh, and plain
# arithmetic, which vectorizes where a call of libm's tanhf per element does not
_CLAMP = _F(7.90531110763549805)
_A1, _A3, _A5, _A7 = (
    _F(4.89352455891786e-03),
    _F(6.37261928875436e-04),
    _F(1.48572235717979e-05),
    _F(5.12229709037114e-08),
)
_A9, _A11, _A13 = _F(-8.60467152213735e-11), _F(2.00018790482477e-13), _F(-2.76076847742355e-16)
_B0, _B2, _B4, _B6 = (
    _F(4.89352518554385e-03),
    _F(2.26843463243900e-03),
    _F(1.18534705686654e-04),
    _F(1.19825839466702e-06),
)


def _numpy_sgemm() -> str:
    """The name of cblas_sgemm in the OpenBLAS NumPy's wheel bundles (the library NumPy's own
    products run on), made known to numba's linker: the layer loops call it without the GIL, and
    by name, so that they stay cacheable (an address would be compiled into the code)."""
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    for path in sorted(libs.glob("libscipy_openblas64_*.so")):
        name = "scipy_cblas_sgemm64_"
        address = ctypes.cast(getattr(ctypes.CDLL(str(path)), name), ctypes.c_void_p).value
        llvmlite.binding.add_symbol(name, address)
        return name
    raise ImportError(f"the OpenBLAS of NumPy's wheel (libscipy_openblas64_*.so) is not in {libs}")


_FLOATS = types.CPointer(types.float32)
_I8 = types.int64
_SGEMM: Any = types.ExternalFunction(
    _numpy_sgemm(),
    types.void(
        types.int32, types.int32, types.int32, _I8, _I8, _I8, types.float32, _FLOATS, _I8, _FLOATS, _I8,
        types.float32, _FLOATS, _I8,
    ),
)  # fmt: skip
_ROW_MAJOR, _NO_TRANS = np.int32(101), np.int32(111)  # CBLAS_ORDER, CBLAS_TRANSPOSE


def _kernel(signature: str) -> Callable[[Callable[..., Any]], Any]:
    """Compiled now for `signature`, without the GIL; error_model numpy: a division by zero gives
    inf as in NumPy instead of a check per element, which would keep the loop from vectorizing.
    Cached where numba finds a writable directory (the package's __pycache__, else the user's
    cache directory, or NUMBA_CACHE_DIR); where none is, compiled at every start."""

    def compile_(fn: Callable[..., Any]) -> Any:
        options: dict[str, Any] = {"nogil": True, "error_model": "numpy"}
        try:
            return numba.njit(signature, cache=True, **options)(fn)
        except RuntimeError as exc:  # numba's "no locator available": nowhere to write a cache
            log.warning("fused step compiled without a disk cache: %s", exc)
            return numba.njit(signature, **options)(fn)

    return compile_


@numba.njit(inline="always")
def _tanh(v: np.float32) -> np.float32:
    x = _CLAMP if v > _CLAMP else v  # NaN stays NaN
    x = -_CLAMP if x < -_CLAMP else x
    x2 = x * x
    p = ((((((_A13 * x2 + _A11) * x2 + _A9) * x2 + _A7) * x2 + _A5) * x2 + _A3) * x2 + _A1) * x
    return p / (((_B6 * x2 + _B4) * x2 + _B2) * x2 + _B0)


@numba.njit(inline="always")
def _act(code: int, v: np.float32) -> np.float32:
    """The activation `code` of v; inlined with a constant code, the branches fold away."""
    if code == 1:
        return _tanh(v)
    if code == 2:
        return _HALF * _tanh(_HALF * v) + _HALF
    if code == 3:
        return v if v > _ZERO else _ZERO
    if code == 4:
        s = v / _SIX + _HALF
        return _ZERO if s < _ZERO else (_ONE if s > _ONE else s)
    if code == 5:
        return v / (_ONE + abs(v))
    if code == 6:
        return (v if v > _ZERO else _ZERO) + _F(math.log1p(math.exp(-abs(v))))
    if code == 7:
        return _F(math.exp(v))
    return v


@numba.njit(inline="always")
def _kept(out_row: Any, h_row: Any, zero_output: bool) -> None:
    """A row without a step: its state stays, its output is its h or zeros."""
    for j in range(out_row.shape[0]):
        out_row[j] = _ZERO if zero_output else h_row[j]


@numba.njit(inline="always")
def _lstm_row(z: Any, bias: Any, c: Any, h: Any, out: Any, act: int, rec: int) -> None:
    zi, zf, zg, zo = z[0], z[1], z[2], z[3]
    bi, bf, bg, bo = bias[0], bias[1], bias[2], bias[3]
    for j in range(c.shape[0]):
        c_new = _act(rec, zf[j] + bf[j]) * c[j] + _act(rec, zi[j] + bi[j]) * _act(act, zg[j] + bg[j])
        c[j] = c_new
        h_new = _act(rec, zo[j] + bo[j]) * _act(act, c_new)
        h[j] = h_new
        out[j] = h_new


@_kernel("void(f4[:, :, ::1], f4[:, ::1], i8, b1[:, ::1], i8, b1, f4[:, ::1], f4[:, ::1], f4[:, :, ::1], i8, i8)")
def lstm_cells(
    z: Any, bias: Any, rows: int, mask: Any, t: int, zero_output: bool, xh: Any, c: Any, out: Any, act: int, rec: int
) -> None:
    """One LSTM step: z [rows, 4 gates (keras' i, f, g, o), units] of [x, h] @ [W; U]; the new
    c in place, the new h into xh's h columns (the next step's product reads them) and out[:, t]."""
    offset = xh.shape[1] - c.shape[1]
    for r in range(c.shape[0]):
        h = xh[r, offset:]
        if r < rows and mask[r, t]:
            if act == TANH and rec == SIGMOID:  # keras' default: constants, so the loop vectorizes
                _lstm_row(z[r], bias, c[r], h, out[r, t], TANH, SIGMOID)
            else:
                _lstm_row(z[r], bias, c[r], h, out[r, t], act, rec)
        else:
            _kept(out[r, t], h, zero_output)


@numba.njit(inline="always")
def _simple_row(z: Any, bias: Any, h: Any, out: Any, act: int) -> None:
    for j in range(h.shape[0]):
        h_new = _act(act, z[j] + bias[j])
        h[j] = h_new
        out[j] = h_new


@_kernel("void(f4[:, ::1], f4[::1], i8, b1[:, ::1], i8, b1, f4[:, ::1], f4[:, :, ::1], i8)")
def simple_cells(
    z: Any, bias: Any, rows: int, mask: Any, t: int, zero_output: bool, xh: Any, out: Any, act: int
) -> None:
    """One SimpleRNN step: h = act([x, h] @ [W; U] + b)."""
    offset = xh.shape[1] - z.shape[1]
    for r in range(xh.shape[0]):
        h = xh[r, offset:]
        if r < rows and mask[r, t]:
            if act == TANH:
                _simple_row(z[r], bias, h, out[r, t], TANH)
            else:
                _simple_row(z[r], bias, h, out[r, t], act)
        else:
            _kept(out[r, t], h, zero_output)


@numba.njit(inline="always")
def _gru_row(xw: Any, hu: Any, bias: Any, rec_bias: Any, h: Any, out: Any, act: int, rec: int) -> None:
    for j in range(h.shape[0]):
        z = _act(rec, xw[0, j] + bias[0, j] + (hu[0, j] + rec_bias[0, j]))
        r = _act(rec, xw[1, j] + bias[1, j] + (hu[1, j] + rec_bias[1, j]))
        candidate = _act(act, xw[2, j] + bias[2, j] + r * (hu[2, j] + rec_bias[2, j]))
        h_new = z * h[j] + (_ONE - z) * candidate
        h[j] = h_new
        out[j] = h_new


@_kernel(
    "void(f4[:, :, ::1], f4[:, :, ::1], f4[:, ::1], f4[:, ::1], i8, b1[:, ::1], i8, b1, f4[:, ::1], f4[:, :, ::1],"
    " i8, i8)"
)
def gru_cells(
    xw: Any,
    hu: Any,
    bias: Any,
    rec_bias: Any,
    rows: int,
    mask: Any,
    t: int,
    zero_output: bool,
    xh: Any,
    out: Any,
    act: int,
    rec: int,
) -> None:
    """One GRU(reset_after) step: xw = x @ W and hu = h @ U, [rows, 3 (keras' z, r, h), units]."""
    offset = xh.shape[1] - xw.shape[2]
    for r in range(xh.shape[0]):
        h = xh[r, offset:]
        if r < rows and mask[r, t]:
            if act == TANH and rec == SIGMOID:
                _gru_row(xw[r], hu[r], bias, rec_bias, h, out[r, t], TANH, SIGMOID)
            else:
                _gru_row(xw[r], hu[r], bias, rec_bias, h, out[r, t], act, rec)
        else:
            _kept(out[r, t], h, zero_output)


@numba.njit(inline="always")
def _reset_gates_row(xw: Any, hu: Any, bias: Any, h: Any, rh: Any, rec: int) -> None:
    for j in range(h.shape[0]):
        xw[0, j] = _act(rec, xw[0, j] + bias[0, j] + hu[0, j])
        rh[j] = _act(rec, xw[1, j] + bias[1, j] + hu[1, j]) * h[j]


@_kernel("void(f4[:, :, ::1], f4[:, :, ::1], f4[:, ::1], i8, f4[:, ::1], f4[:, ::1], i8)")
def gru_reset_gates(xw: Any, hu: Any, bias: Any, rows: int, xh: Any, rh: Any, rec: int) -> None:
    """GRU(reset_after=False), first pass: the update gate z into xw's z block, and r * h, which
    the candidate's recurrent product takes (keras multiplies before the product)."""
    offset = xh.shape[1] - rh.shape[1]
    for r in range(rows):
        if rec == SIGMOID:
            _reset_gates_row(xw[r], hu[r], bias, xh[r, offset:], rh[r], SIGMOID)
        else:
            _reset_gates_row(xw[r], hu[r], bias, xh[r, offset:], rh[r], rec)


@numba.njit(inline="always")
def _reset_update_row(xw: Any, rhu: Any, bias: Any, h: Any, out: Any, act: int) -> None:
    for j in range(h.shape[0]):
        z = xw[0, j]
        h_new = z * h[j] + (_ONE - z) * _act(act, xw[2, j] + bias[2, j] + rhu[j])
        h[j] = h_new
        out[j] = h_new


@_kernel("void(f4[:, :, ::1], f4[:, ::1], f4[:, ::1], i8, b1[:, ::1], i8, b1, f4[:, ::1], f4[:, :, ::1], i8)")
def gru_reset_update(
    xw: Any, rhu: Any, bias: Any, rows: int, mask: Any, t: int, zero_output: bool, xh: Any, out: Any, act: int
) -> None:
    """GRU(reset_after=False), second pass: the candidate from (r * h) @ U_h and the new h."""
    offset = xh.shape[1] - rhu.shape[1]
    for r in range(xh.shape[0]):
        h = xh[r, offset:]
        if r < rows and mask[r, t]:
            if act == TANH:
                _reset_update_row(xw[r], rhu[r], bias, h, out[r, t], TANH)
            else:
                _reset_update_row(xw[r], rhu[r], bias, h, out[r, t], act)
        else:
            _kept(out[r, t], h, zero_output)


@numba.njit(inline="always")
def _product(a: Any, col: int, width: int, rows: int, b: Any, c: Any) -> None:
    """c[:rows] = a[:rows, col:col + width] @ b, by BLAS (row major: a's rows are whole rows of a)."""
    if rows == 0:
        return
    n = b.shape[1]
    _SGEMM(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, rows, n, width, _ONE, a[:, col:].ctypes, a.shape[1], b.ctypes, n, _ZERO,
           c.ctypes, c.shape[1])  # fmt: skip


@_kernel(
    "void(f4[:, :, ::1], i8[::1], b1[:, ::1], f4[:, ::1], f4[:, ::1], b1, f4[:, ::1], f4[:, ::1], f4[:, ::1],"
    " f4[:, :, ::1], i8, i8)"
)
def lstm_layer(
    x: Any, rows: Any, mask: Any, kernel: Any, bias: Any, zero_output: bool, xh: Any, c: Any, z: Any, out: Any,
    act: int, rec: int,
) -> None:  # fmt: skip
    """Every step of an LSTM layer: per step t, [x_t, h] @ [W; U] of the first rows[t] rows, then
    the cells. xh holds h in its last columns and c the cell state, both updated in place."""
    features, n = x.shape[2], c.shape[1]
    z3 = z.reshape((z.shape[0], 4, n))
    for t in range(x.shape[1]):
        xh[: rows[t], :features] = x[: rows[t], t]
        _product(xh, 0, xh.shape[1], rows[t], kernel, z)
        lstm_cells(z3, bias, rows[t], mask, t, zero_output, xh, c, out, act, rec)


@_kernel("void(f4[:, :, ::1], i8[::1], b1[:, ::1], f4[:, ::1], f4[::1], b1, f4[:, ::1], f4[:, ::1], f4[:, :, ::1], i8)")
def simple_layer(
    x: Any, rows: Any, mask: Any, kernel: Any, bias: Any, zero_output: bool, xh: Any, z: Any, out: Any, act: int
) -> None:
    """Every step of a SimpleRNN layer, as lstm_layer's."""
    features = x.shape[2]
    for t in range(x.shape[1]):
        xh[: rows[t], :features] = x[: rows[t], t]
        _product(xh, 0, xh.shape[1], rows[t], kernel, z)
        simple_cells(z, bias, rows[t], mask, t, zero_output, xh, out, act)


@_kernel(
    "void(f4[:, :, ::1], i8[::1], b1[:, ::1], f4[:, ::1], f4[:, ::1], f4[:, ::1], f4[:, ::1], f4[:, ::1], b1, b1,"
    " f4[:, ::1], f4[:, ::1], f4[:, ::1], f4[:, ::1], f4[:, ::1], f4[:, :, ::1], i8, i8)"
)
def gru_layer(
    x: Any, rows: Any, mask: Any, kernel: Any, recurrent: Any, candidate: Any, bias: Any, rec_bias: Any,
    reset_after: bool, zero_output: bool, xh: Any, xw: Any, hu: Any, rh: Any, rhu: Any, out: Any, act: int, rec: int,
) -> None:  # fmt: skip
    """Every step of a GRU layer: x_t @ W and h @ U, and with reset_after=False (r * h) @ U_h
    between the gates and the update; h in xh's last columns, updated in place."""
    features, n = x.shape[2], rh.shape[1]
    xw3 = xw.reshape((xw.shape[0], 3, n))
    hu3 = hu.reshape((hu.shape[0], hu.shape[1] // n, n))
    for t in range(x.shape[1]):
        xh[: rows[t], :features] = x[: rows[t], t]
        _product(xh, 0, features, rows[t], kernel, xw)
        _product(xh, features, n, rows[t], recurrent, hu)
        if reset_after:
            gru_cells(xw3, hu3, bias, rec_bias, rows[t], mask, t, zero_output, xh, out, act, rec)
        else:
            gru_reset_gates(xw3, hu3, bias, rows[t], xh, rh, rec)
            _product(rh, 0, n, rows[t], candidate, rhu)
            gru_reset_update(xw3, rhu, bias, rows[t], mask, t, zero_output, xh, out, act)
