"""Wire formats (version 1): events, predictions, state records and dead letters.

All values are msgpack maps; DESIGN.md is the contract. Decoding is bounded by the
record's own size (msgpack's unpackb never allocates beyond it) and refuses any type
it does not expect, so a hostile record costs one CodecError, never the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from worker.errors import CodecError

WIRE_VERSION = 1
_EVENT_KEYS = frozenset({"x", "ts", "reset", "end"})


@dataclass(slots=True)
class Event:
    """One decoded input record, ready for the batcher."""

    partition: int
    offset: int
    x: np.ndarray
    ts: int
    reset: bool
    end: bool


@dataclass(slots=True)
class StateRecord:
    """A key's carried state as stored in the state topic."""

    model: str
    step: int
    src_partition: int
    src_offset: int
    ts: int
    state: np.ndarray


def _unpack_map(value: bytes) -> dict[Any, Any]:
    try:
        obj = msgpack.unpackb(value, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise CodecError("decode", f"not valid msgpack: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise CodecError("type", f"value must be a msgpack map, got {type(obj).__name__}")
    return obj


def _features(x: Any, features: int) -> np.ndarray:
    if isinstance(x, bytes):
        if len(x) != 4 * features:
            raise CodecError("shape", f"x has {len(x)} bytes, expected {4 * features} (float32 x {features})")
        arr = np.frombuffer(x, dtype="<f4")
    elif isinstance(x, list):
        if len(x) != features:
            raise CodecError("shape", f"x has {len(x)} numbers, expected {features}")
        if not all(type(v) in (int, float) for v in x):
            raise CodecError("type", "x must hold only numbers")
        arr = np.asarray(x, dtype=np.float32)
    else:
        raise CodecError("type", f"x must be a list of numbers or float32 bytes, got {type(x).__name__}")
    if not np.isfinite(arr).all():
        raise CodecError("non_finite", "x holds NaN or infinity")
    return arr


def _flag(obj: dict[Any, Any], name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise CodecError("type", f"{name!r} must be true or false, got {type(value).__name__}")
    return value


def decode_event(
    value: bytes | None, *, features: int, partition: int, offset: int, record_ts: int, max_bytes: int
) -> Event:
    """Validate and decode one event value; raises CodecError with a dead-letter reason."""
    if value is None:
        raise CodecError("decode", "value is empty (null)")
    if len(value) > max_bytes:
        raise CodecError("too_large", f"value has {len(value)} bytes, the limit is {max_bytes}")
    obj = _unpack_map(value)
    if "x" not in obj:
        raise CodecError("missing_field", "the event has no 'x'")
    unknown = obj.keys() - _EVENT_KEYS
    if unknown:
        raise CodecError("type", f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    x = _features(obj["x"], features)
    ts = obj.get("ts", record_ts)
    if type(ts) is not int:
        raise CodecError("type", f"'ts' must be an integer (ms since epoch), got {type(ts).__name__}")
    return Event(partition, offset, x, ts, _flag(obj, "reset"), _flag(obj, "end"))


def encode_event(
    x: np.ndarray | list[float], *, ts: int | None = None, reset: bool = False, end: bool = False
) -> bytes:
    """Producer side; an ndarray goes as raw float32 bytes (the fast path)."""
    obj: dict[str, Any] = {"x": np.asarray(x, dtype="<f4").tobytes() if isinstance(x, np.ndarray) else list(x)}
    if ts is not None:
        obj["ts"] = ts
    if reset:
        obj["reset"] = True
    if end:
        obj["end"] = True
    return msgpack.packb(obj, use_bin_type=True)


def encode_prediction(y: list[float], *, ts: int, partition: int, offset: int, step: int, model: str) -> bytes:
    return msgpack.packb(
        {"v": WIRE_VERSION, "y": y, "ts": ts, "src": [partition, offset], "step": step, "model": model},
        use_bin_type=True,
    )


@dataclass(slots=True)
class Prediction:
    y: list[float]
    partition: int
    offset: int
    step: int
    ts: int
    model: str


def decode_prediction(value: bytes | None) -> Prediction:
    """Downstream side (verify, tests): the prediction of one event."""
    obj = _unpack_map(value or b"")
    y, src = obj.get("y"), obj.get("src")
    if not isinstance(y, list) or not isinstance(src, list) or len(src) != 2:
        raise CodecError("type", "a prediction needs 'y' and 'src' [partition, offset] lists")
    try:
        return Prediction(
            [float(v) for v in y], int(src[0]), int(src[1]), int(obj["step"]), int(obj["ts"]), str(obj["model"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError("type", f"malformed prediction: {exc}") from exc


def encode_state(
    state: np.ndarray, sizes: list[int], *, model: str, step: int, partition: int, offset: int, ts: int
) -> bytes:
    """One bin per state tensor, in layer order, as raw little-endian float32."""
    flat = np.ascontiguousarray(state, dtype="<f4")
    if flat.size != sum(sizes):
        raise ValueError(f"state has {flat.size} floats, the layout {sizes} needs {sum(sizes)}")
    parts, start = [], 0
    for size in sizes:
        parts.append(flat[start : start + size].tobytes())
        start += size
    return msgpack.packb(
        {"v": WIRE_VERSION, "model": model, "step": step, "src": [partition, offset], "ts": ts, "s": parts},
        use_bin_type=True,
    )


def decode_state(value: bytes, sizes: list[int]) -> StateRecord:
    """Decode a state record; a record of another layout is a CodecError, never a silent reshape.

    On the restore path for every record, so the checks are few and flat.
    """
    obj = _unpack_map(value)
    version = obj.get("v")
    if type(version) is not int or version != WIRE_VERSION:
        raise CodecError("version", f"state record version {version!r}, this worker reads {WIRE_VERSION}")
    src, parts, model, step, ts = obj.get("src"), obj.get("s"), obj.get("model"), obj.get("step"), obj.get("ts")
    if not (
        type(model) is str
        and type(step) is int
        and type(ts) is int
        and type(src) is list
        and len(src) == 2
        and type(src[0]) is int
        and type(src[1]) is int
        and parts is not None
    ):
        raise CodecError("type", "a state record needs model (str), step, ts (int) and src [partition, offset]")
    if (
        type(parts) is not list
        or not all(type(p) is bytes for p in parts)
        or list(map(len, parts)) != [4 * s for s in sizes]
    ):
        raise CodecError("shape", f"state tensors do not match the model's sizes {sizes}")
    return StateRecord(model, step, src[0], src[1], ts, np.frombuffer(b"".join(parts), dtype="<f4"))


def dead_letter_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int
) -> list[tuple[str, str | bytes | None]]:
    return [
        ("error", reason.encode()),
        ("error.detail", detail[:1000].encode("utf-8", "replace")),
        ("src.topic", topic.encode()),
        ("src.partition", str(partition).encode()),
        ("src.offset", str(offset).encode()),
    ]
