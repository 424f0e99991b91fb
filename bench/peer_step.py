"""The Quix Streams peer's arithmetic and records (bench/peer.py), in NumPy and msgpack alone.

Importable without quixstreams and TensorFlow: the peer's own venv has neither TensorFlow nor
the worker's confluent-kafka, and the main venv tests this module against Keras. One event
is one step of one row, in the fastest per-message form found: per LSTM layer one
vector-matrix product of [x, h, 1] with [W; U; b] and one exp over all four gates (the
sigmoid gates' columns negated, the candidate's doubled and negated, so the same
1 / (1 + exp) gives both activations).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

Array = np.ndarray
# The .npz layout: per LSTM layer i `k{i}` [in + n + 1, 4n] with the gate columns in the order
# i, f, o, g and scaled as above; the Dense layer `dense_kernel`, `dense_bias`; `fingerprint`.


@dataclass(frozen=True)
class PeerModel:
    """Stacked LSTMs and a sigmoid Dense: the reference model's form (bench/run.py)."""

    kernels: list[Array]
    dense_kernel: Array
    dense_bias: Array
    fingerprint: str

    @classmethod
    def load(cls, path: str | Path) -> PeerModel:
        with np.load(path) as npz:
            layers = sum(1 for name in npz.files if name.startswith("k"))
            return cls(
                [np.ascontiguousarray(npz[f"k{i}"]) for i in range(layers)],
                np.ascontiguousarray(npz["dense_kernel"]),
                np.ascontiguousarray(npz["dense_bias"]),
                str(npz["fingerprint"]),
            )

    def save(self, path: str | Path) -> None:
        arrays: dict[str, Any] = {f"k{i}": k for i, k in enumerate(self.kernels)}
        arrays |= {"dense_kernel": self.dense_kernel, "dense_bias": self.dense_bias}
        np.savez(path, **arrays, fingerprint=np.array(self.fingerprint))

    @property
    def units(self) -> list[int]:
        return [k.shape[1] // 4 for k in self.kernels]

    @property
    def state_size(self) -> int:
        """h and c of every layer, as the worker's state row: [h0, c0, h1, c1, ...]."""
        return 2 * sum(self.units)

    def zero_state(self) -> Array:
        return np.zeros(self.state_size, np.float32)

    def step(self, x: Array, state: Array) -> tuple[Array, Array]:
        """One event of one key: (the model's output [out], the new state [state_size])."""
        new: list[Array] = []
        inputs, offset = x, 0
        with np.errstate(over="ignore"):  # exp's overflow to inf gives the activations' limits exactly
            for kernel, n in zip(self.kernels, self.units, strict=True):
                h, c = state[offset : offset + n], state[offset + n : offset + 2 * n]
                offset += 2 * n
                z = np.concatenate((inputs, h, _ONE)) @ kernel
                np.exp(z, out=z)
                z += 1.0
                np.reciprocal(z, out=z)  # i, f, o: sigmoid; g: (tanh + 1) / 2
                g = z[3 * n :]
                g *= 2.0
                g -= 1.0
                c_new = z[n : 2 * n] * c
                c_new += z[:n] * g
                h_new = np.tanh(c_new)
                h_new *= z[2 * n : 3 * n]
                new += (h_new, c_new)
                inputs = h_new
            y = inputs @ self.dense_kernel
            y += self.dense_bias
            np.negative(y, out=y)
            np.exp(y, out=y)
            y += 1.0
            np.reciprocal(y, out=y)
        return y, np.concatenate(new)


_ONE = np.ones(1, np.float32)


def lstm_kernel(kernel: Array, recurrent: Array, bias: Array) -> Array:
    """[W; U; b] of a Keras LSTM (gate columns i, f, g, o) as `PeerModel.step` takes it."""
    n = recurrent.shape[0]
    fused = np.concatenate([kernel, recurrent, bias[None, :]]).astype(np.float32)
    gates = -np.concatenate([fused[:, : 2 * n], fused[:, 3 * n :]], axis=1)  # i, f, o
    return np.ascontiguousarray(np.concatenate([gates, -2.0 * fused[:, 2 * n : 3 * n]], axis=1))


def decode_event(value: bytes, record_ts: int) -> tuple[Array, int, bool, bool]:
    """x, ts, reset, end of a msgpack event (docs/wire-format.md): x raw float32 or numbers."""
    event = msgpack.unpackb(value)
    x = event["x"]
    xs = np.frombuffer(x, "<f4") if isinstance(x, bytes) else np.asarray(x, np.float32)
    return xs, event.get("ts", record_ts), event.get("reset", False), event.get("end", False)


class PredictionEncoder:
    """The worker's msgpack prediction (docs/wire-format.md) byte for byte, by one struct call."""

    def __init__(self, outputs: int, model: str) -> None:
        if outputs > 15:
            raise ValueError("a fixarray holds at most 15 outputs")
        head = b"\x86" + _str("v") + b"\x01" + _str("y") + bytes([0x90 | outputs])
        self._parts = (head, _str("ts") + b"\xd3", _str("src") + b"\x92\xd3", _str("step") + b"\xd3")
        head_, ts_, src_, step_ = (f"{len(part)}s" for part in self._parts)
        self._struct = struct.Struct(f">{head_}{'Bd' * outputs}{ts_}q{src_}qBq{step_}q")
        self._tail = _str("model") + msgpack.packb(model)

    def encode(self, y: Array, ts: int, partition: int, offset: int, step: int) -> bytes:
        head, ts_key, src_key, step_key = self._parts
        ys = [v for value in y.tolist() for v in (0xCB, value)]
        packed = self._struct.pack(head, *ys, ts_key, ts, src_key, partition, 0xD3, offset, step_key, step)
        return packed + self._tail


def _str(name: str) -> bytes:
    return msgpack.packb(name)
