"""Wire formats (version 1): events, predictions, state records and dead letters.

All values are msgpack maps; docs/wire-format.md is the contract. Decoding is bounded by the
record's own size and fixed container limits, and refuses any type it does not expect,
so a hostile record costs one CodecError, never the worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from worker.errors import CodecError

WIRE_VERSION = 1
_INT64 = b"\xd3"  # msgpack int 64 marker: predictions and states write their integers at fixed width
_EVENT_KEYS = frozenset({"x", "ts", "reset", "end"})


@dataclass(slots=True)
class Event:
    """One decoded input record, ready for the batcher."""

    partition: int
    offset: int
    x: np.ndarray  # float32, C-contiguous: a round joins the rows' bytes
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


# Container limits of every decode. msgpack allocates an array's list as soon as it reads the
# header, so a 3-byte header claiming 65,535 items costs 512 KB, a thousand of them nested
# 500 MB. Maps hold at most MAX_MAP_LEN pairs and arrays only a few more items than the
# record needs (strings and bins stay within the record, which msgpack enforces), nesting
# stops at msgpack's stack limit and extension types are refused: a hostile record allocates
# at most a few hundred bytes per byte of itself (itself capped by --max-event-bytes).
MAX_MAP_LEN = 16
_ARRAY_SLACK = 8  # items beyond what a record needs: a slightly wrong length is a `shape` error


def _refuse_ext(code: int, data: bytes) -> Any:
    raise CodecError("type", f"msgpack extension type {code} is not accepted")


def _unpack_map(value: bytes, items: int) -> dict[Any, Any]:
    """The record's map; `items` is the longest array the record may legitimately hold."""
    try:
        obj = msgpack.unpackb(
            value,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_map_len=MAX_MAP_LEN,
            max_array_len=items + _ARRAY_SLACK,
            ext_hook=_refuse_ext,
        )
    except CodecError:
        raise
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


TS_MAX = 2**63 - 1  # timestamps are int64 from here on (predictions, states, stream time)


def _event_fields(
    value: bytes | None, features: int, record_ts: int, max_bytes: int
) -> tuple[np.ndarray, int, bool, bool]:
    """x, ts, reset and end of one event value; raises CodecError with a dead-letter reason."""
    if value is None:
        raise CodecError("decode", "value is empty (null)")
    if len(value) > max_bytes:
        raise CodecError("too_large", f"value has {len(value)} bytes, the limit is {max_bytes}")
    obj = _unpack_map(value, features)
    if "x" not in obj:
        raise CodecError("missing_field", "the event has no 'x'")
    unknown = obj.keys() - _EVENT_KEYS
    if unknown:
        raise CodecError("type", f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    x = _features(obj["x"], features)
    ts = obj.get("ts", record_ts)
    if type(ts) is not int:
        raise CodecError("type", f"'ts' must be an integer (ms since epoch), got {type(ts).__name__}")
    if not -TS_MAX - 1 <= ts <= TS_MAX:
        raise CodecError("type", f"'ts' {ts} does not fit in a signed 64-bit integer (ms since epoch)")
    return x, ts, _flag(obj, "reset"), _flag(obj, "end")


def decode_event(
    value: bytes | None, *, features: int, partition: int, offset: int, record_ts: int, max_bytes: int
) -> Event:
    """Validate and decode one event value (tools and tests; the worker decodes a poll's
    events together with EventDecoder); raises CodecError with a dead-letter reason."""
    return Event(partition, offset, *_event_fields(value, features, record_ts, max_bytes))


@dataclass(slots=True)
class DecodedEvents:
    """A poll's values decoded: row i of each array is value i, valid where `ok`."""

    ok: np.ndarray  # bool: the value is an event
    x: np.ndarray  # [values, features] float32
    ts: np.ndarray  # int64
    reset: np.ndarray  # bool
    end: np.ndarray  # bool
    rejected: list[tuple[int, CodecError]]  # (index, dead-letter reason), ascending


class EventDecoder:
    """Decodes a poll's worth of events at once, into columns.

    The common events, `{"x": <float32 bytes>}` and `{"x": <float32 bytes>, "ts": <uint64>}`
    (what `encode_event` writes) and nothing else, are recognised by their exact bytes, and
    all such events of a poll become float32 and int64 arrays in a few NumPy calls (the finite
    check too); every other value is decoded on its own. Same results as `decode_event`, a
    fraction of the per-event cost, and no Python object per event.
    """

    def __init__(self, features: int, max_bytes: int) -> None:
        self.features = features
        self.max_bytes = max_bytes
        width = 4 * features
        plain = msgpack.packb({"x": bytes(width)}, use_bin_type=True)
        timed = msgpack.packb({"x": bytes(width), "ts": 2**64 - 1}, use_bin_type=True)  # ts as uint64
        x_at = len(plain) - width
        x = ("x", ("<f4", (features,)))
        shapes = [
            (_FixedLayout([plain[:x_at], x], markers={}), False),
            (_FixedLayout([timed[:x_at], x, timed[x_at + width : -8], ("ts", ">u8")], markers={}), True),
        ]
        # (layout, has ts); an event longer than max_bytes is too_large, whatever its shape
        self._shapes = [(layout, has_ts) for layout, has_ts in shapes if layout.size <= max_bytes]

    def decode(self, values: list[bytes | None], record_ts: Callable[[list[int]], list[int]]) -> DecodedEvents:
        """`record_ts(indexes)` gives those records' own timestamps: the ts of an event without
        one (asked only for such events: docs/performance.md, "Events as columns")."""
        n = len(values)
        x = np.zeros((n, self.features), dtype=np.float32)
        ts = np.zeros(n, dtype=np.int64)
        reset, end = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        fast, sizes = np.zeros(n, dtype=bool), value_sizes(values)
        for layout, has_ts in self._shapes:  # their lengths differ: a value fits one at most
            indexes, rows = layout.parse(values, sizes)
            if not len(indexes):
                continue
            fast[indexes] = True
            x[indexes] = rows["x"]
            if has_ts:
                stamps = rows["ts"]
                fast[indexes[stamps > TS_MAX]] = False  # the general path says why
                ts[indexes] = stamps.astype(np.int64)
            else:
                ts[indexes] = record_ts(indexes.tolist())
        ok = fast & np.isfinite(x).all(axis=1)
        rejected = [
            (i, CodecError("non_finite", "x holds NaN or infinity")) for i in np.flatnonzero(fast & ~ok).tolist()
        ]
        general = np.flatnonzero(~fast).tolist()
        for i, stamp in zip(general, record_ts(general) if general else [], strict=True):
            try:
                x[i], ts[i], reset[i], end[i] = _event_fields(values[i], self.features, stamp, self.max_bytes)
            except CodecError as exc:
                rejected.append((i, exc))
                continue
            ok[i] = True
        rejected.sort(key=lambda item: item[0])
        return DecodedEvents(ok, x, ts, reset, end, rejected)


def encode_event(
    x: np.ndarray | list[float], *, ts: int | None = None, reset: bool = False, end: bool = False
) -> bytes:
    """Producer side; an ndarray goes as raw float32 bytes (the fast path)."""
    x_value = np.asarray(x, dtype="<f4").tobytes() if isinstance(x, np.ndarray) else list(x)
    return msgpack.packb(event_fields(x_value, ts, reset, end), use_bin_type=True)


def event_fields(x: Any, ts: int | None, reset: bool, end: bool) -> dict[str, Any]:
    """An event's fields as a producer writes them in any format: the optional ones only when set."""
    fields: dict[str, Any] = {"x": x}
    if ts is not None:
        fields["ts"] = ts
    if reset:
        fields["reset"] = True
    if end:
        fields["end"] = True
    return fields


def _array_header(length: int) -> bytes:
    zeros = msgpack.packb([0] * length)  # the header, then one byte per zero
    return zeros[: len(zeros) - length]


# Records from this size up are cut out of the rows one by one rather than out of a copy of
# them all, the faster way for large records (docs/performance.md, "Records encoded together")
_COPY_ONCE_BYTES = 1024


class _FixedLayout:
    """Records that all share one msgpack layout, written as rows of a NumPy structured array.

    With integers at fixed width (int64, which every msgpack reader accepts) and arrays of
    fixed length, every record of a kind has the same bytes but for its values: a batch is
    filled column by column and cut into records, instead of one `packb` per record.
    """

    def __init__(self, parts: list[bytes | tuple[str, Any]], markers: dict[str, int]) -> None:
        fields, self._constants = [], []
        for i, part in enumerate(parts):
            if isinstance(part, bytes):
                fields.append((f"c{i}", f"S{len(part)}"))
                self._constants.append((f"c{i}", part))
            else:
                fields.append(part)
        self._markers = markers  # field -> type byte written before each of its values
        self._dtype = np.dtype(fields)
        self._template = self._blank(1)  # grows to the largest batch

    def _blank(self, rows: int) -> np.ndarray:
        out = np.zeros(rows, dtype=self._dtype)
        for name, part in self._constants:
            out[name] = part
        for name, marker in self._markers.items():
            out[name]["marker"] = marker
        return out

    def rows(self, n: int) -> np.ndarray:
        """n records with their constant bytes in place, for the caller to fill every variable
        field of and `cut`: the rows are reused by the next call (a copy would cost as much as
        the encoding itself for large records)."""
        if n > len(self._template):
            self._template = self._blank(max(n, 2 * len(self._template)))
        return self._template[:n]

    def cut(self, rows: np.ndarray) -> list[bytes]:
        size = self.size
        if size < _COPY_ONCE_BYTES:  # one copy of the batch, then cheap slices
            buf = rows.tobytes()
            return [buf[i : i + size] for i in range(0, len(rows) * size, size)]
        view = rows.view(np.uint8).data  # large records: each copied once, straight from the rows
        return [bytes(view[i : i + size]) for i in range(0, len(rows) * size, size)]

    @property
    def size(self) -> int:
        """Bytes of every record of this layout."""
        return int(self._dtype.itemsize)

    def parse(self, values: list[bytes | None], sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The values written in exactly this layout (length and every constant byte), as rows:
        their indexes, and the rows. Anything else is left to the caller's general decoder.
        `sizes` are the values' lengths (`value_sizes`), computed once for every layout tried."""
        fits = np.flatnonzero(sizes == self.size)
        chosen = values if len(fits) == len(values) else [values[i] for i in fits.tolist()]
        rows = np.frombuffer(b"".join(chosen), dtype=self._dtype)  # type: ignore[arg-type]
        ok = np.ones(len(rows), dtype=bool)
        for name, part in self._constants:
            ok &= rows[name] == part
        for name, marker in self._markers.items():
            ok &= (rows[name]["marker"] == marker).all(axis=-1)
        if ok.all():
            return fits, rows
        return fits[ok], rows[ok]


def value_sizes(values: list[bytes | None]) -> np.ndarray:
    """Each value's length, -1 for a null one."""
    try:
        return np.fromiter(map(len, values), dtype=np.int64, count=len(values))  # type: ignore[arg-type]
    except TypeError:  # a null value
        return np.array([-1 if value is None else len(value) for value in values], dtype=np.int64)


def _key(name: str) -> bytes:
    return msgpack.packb(name)


def _bin_header(length: int) -> bytes:
    packed = msgpack.packb(bytes(length), use_bin_type=True)
    return packed[: len(packed) - length]


_I64 = ">i8"


class PredictionEncoder:
    """A round's predictions, encoded with one NumPy call."""

    def __init__(self, output_dim: int, model: str) -> None:
        self._layout = _FixedLayout(
            [
                b"\x86" + _key("v") + msgpack.packb(WIRE_VERSION) + _key("y") + _array_header(output_dim),
                ("y", ([("marker", "u1"), ("value", ">f8")], (output_dim,))),
                _key("ts") + _INT64,
                ("ts", _I64),
                _key("src") + b"\x92" + _INT64,
                ("partition", _I64),
                _INT64,
                ("offset", _I64),
                _key("step") + _INT64,
                ("step", _I64),
                _key("model") + msgpack.packb(model),
            ],
            markers={"y": 0xCB},  # float 64
        )

    def encode(
        self, y: np.ndarray, ts: np.ndarray, partition: np.ndarray, offset: np.ndarray, step: np.ndarray
    ) -> list[bytes]:
        """One record per row of `y` [n, output_dim]; the other arguments are [n] integers."""
        rows = self._layout.rows(len(y))
        rows["y"]["value"] = y
        rows["ts"], rows["partition"], rows["offset"], rows["step"] = ts, partition, offset, step
        return self._layout.cut(rows)


@dataclass(slots=True)
class StateBatch:
    """State records decoded together: row i of every array is record i."""

    states: np.ndarray  # [n, state_dim] float32
    step: np.ndarray
    src_partition: np.ndarray
    src_offset: np.ndarray
    ts: np.ndarray


class StateEncoder:
    """State records of many keys with one NumPy call: one bin of raw float32 per state tensor."""

    def __init__(self, sizes: list[int], model: str) -> None:
        self.sizes = list(sizes)
        parts: list[bytes | tuple[str, Any]] = [
            b"\x86"
            + _key("v")
            + msgpack.packb(WIRE_VERSION)
            + _key("model")
            + msgpack.packb(model)
            + _key("step")
            + _INT64,
            ("step", _I64),
            _key("src") + b"\x92" + _INT64,
            ("partition", _I64),
            _INT64,
            ("offset", _I64),
            _key("ts") + _INT64,
            ("ts", _I64),
            _key("s") + _array_header(len(sizes)),
        ]
        for i, size in enumerate(sizes):
            parts += [_bin_header(4 * size), (f"s{i}", ("<f4", (size,)))]
        self._layout = _FixedLayout(parts, markers={})

    def decode_many(self, values: list[bytes | None]) -> tuple[np.ndarray, StateBatch]:
        """The values this encoder wrote (this model, this layout), decoded together: their
        indexes and contents. Others (tombstones, other models or writers) need `decode_state`."""
        indexes, rows = self._layout.parse(values, value_sizes(values))
        states = np.concatenate([rows[f"s{i}"] for i in range(len(self.sizes))], axis=1, dtype=np.float32)
        finite = np.isfinite(states).all(axis=1)  # the others get decode_state's error
        if not finite.all():
            indexes, rows, states = indexes[finite], rows[finite], states[finite]
        cast = [rows[name].astype(np.int64) for name in ("step", "partition", "offset", "ts")]
        return indexes, StateBatch(states, *cast)

    def encode(
        self, states: np.ndarray, step: np.ndarray, partition: np.ndarray, offset: np.ndarray, ts: np.ndarray
    ) -> list[bytes]:
        """One record per row of `states` [n, sum(sizes)]; `offset` is each key's `src`."""
        if states.shape[1:] != (sum(self.sizes),):
            raise ValueError(f"states have shape {states.shape}, the layout {self.sizes} needs [n, {sum(self.sizes)}]")
        rows = self._layout.rows(len(states))
        rows["step"], rows["partition"], rows["offset"], rows["ts"] = step, partition, offset, ts
        start = 0
        for i, size in enumerate(self.sizes):
            rows[f"s{i}"] = states[:, start : start + size]
            start += size
        return self._layout.cut(rows)


def encode_prediction(y: list[float], *, ts: int, partition: int, offset: int, step: int, model: str) -> bytes:
    """One prediction (tests, tools); the worker encodes whole rounds with PredictionEncoder."""
    return PredictionEncoder(len(y), model).encode(
        np.array([y], dtype=np.float64), *(np.array([v], dtype=np.int64) for v in (ts, partition, offset, step))
    )[0]


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
    obj = _unpack_map(value or b"", len(value or b""))  # a reader's tool: y may be any length
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
    """One key's state record (tests, tools); the worker writes many with StateEncoder."""
    flat = np.asarray(state, dtype=np.float32).reshape(1, -1)
    if flat.shape[1] != sum(sizes):
        raise ValueError(f"state has {flat.size} floats, the layout {sizes} needs {sum(sizes)}")
    return StateEncoder(sizes, model).encode(
        flat, *(np.array([v], dtype=np.int64) for v in (step, partition, offset, ts))
    )[0]


def decode_state(value: bytes, sizes: list[int]) -> StateRecord:
    """Decode a state record; a record of another layout is a CodecError, never a silent reshape.

    On the restore path for every record, so the checks are few and flat.
    """
    obj = _unpack_map(value, len(sizes))
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
