"""JSON values: events as UTF-8 objects `{"x": [...], "ts": ..., "reset": ..., "end": ...}`,
predictions as `{"y": [...], "ts": ..., "src": [partition, offset], "step": n, "model": "..."}`.

msgspec decodes and validates against typed structs in C: a poll's values are one newline-joined
buffer and one `decode_lines` call, and a round's predictions one `encode_lines` call
(docs/performance.md, "JSON"). A value that would change the line count (a newline inside it, an
empty value) or any invalid value sends the poll to the per-value path, which says why.
"""

from __future__ import annotations

from itertools import repeat
from operator import attrgetter
from typing import Annotated

import msgspec
import numpy as np

from worker.codec import TS_MAX, DecodedEvents, Prediction, event_fields, value_sizes
from worker.errors import CodecError
from worker.formats import RecordTimestamps

_Ts = Annotated[int, msgspec.Meta(ge=-TS_MAX - 1, le=TS_MAX)]


def _event_type(features: int) -> type[msgspec.Struct]:
    """The event struct of a model with `features` inputs: x's length is part of the type."""
    x = Annotated[list[float], msgspec.Meta(min_length=features, max_length=features)]
    return msgspec.defstruct(
        "JsonEvent",
        [("x", x), ("ts", _Ts | None, None), ("reset", bool, False), ("end", bool, False)],
        forbid_unknown_fields=True,
    )


def _reason(exc: msgspec.MsgspecError) -> CodecError:
    """The dead-letter reason of msgspec's error, its message as the detail."""
    text = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return CodecError("decode", f"not valid UTF-8 JSON: {text}")
    if "missing required field" in text:
        return CodecError("missing_field", text)
    if "of length" in text:
        return CodecError("shape", text)
    if "out of range" in text and "$.x" in text:
        return CodecError("non_finite", f"x holds a number beyond float range: {text}")
    return CodecError("type", text)


_X, _TS, _RESET, _END = (attrgetter(name) for name in ("x", "ts", "reset", "end"))


class JsonEventDecoder:
    def __init__(self, features: int, max_bytes: int) -> None:
        self.features = features
        self.max_bytes = max_bytes
        self._decoder = msgspec.json.Decoder(_event_type(features))

    def _together(self, values: list[bytes]) -> list[msgspec.Struct] | None:
        """All values decoded by one call, or None when any is not one valid event on one line."""
        joined = b"\n".join(values)
        if joined.count(b"\n") != len(values) - 1:
            return None
        try:
            events = self._decoder.decode_lines(joined)
        except msgspec.MsgspecError:
            return None
        return events if len(events) == len(values) else None

    def _one_by_one(self, values: list[bytes]) -> tuple[list[msgspec.Struct], list[int], list[tuple[int, CodecError]]]:
        events, good, bad = [], [], []
        for i, value in enumerate(values):
            try:
                events.append(self._decoder.decode(value))
                good.append(i)
            except msgspec.MsgspecError as exc:
                bad.append((i, _reason(exc)))
        return events, good, bad

    def decode(self, values: list[bytes | None], record_ts: RecordTimestamps) -> DecodedEvents:
        n = len(values)
        x = np.zeros((n, self.features), dtype=np.float32)
        ts = np.zeros(n, dtype=np.int64)
        reset, end, ok = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        sizes = value_sizes(values)
        rejected = [(i, CodecError("decode", "value is empty (null)")) for i in np.flatnonzero(sizes < 0).tolist()]
        rejected += [
            (i, CodecError("too_large", f"value has {sizes[i]} bytes, the limit is {self.max_bytes}"))
            for i in np.flatnonzero(sizes > self.max_bytes).tolist()
        ]
        if rejected:
            index = np.flatnonzero((sizes >= 0) & (sizes <= self.max_bytes))
            candidates: list[bytes] = [values[i] for i in index.tolist()]  # type: ignore[misc]
        else:
            index, candidates = np.arange(n), values  # type: ignore[assignment]
        together = self._together(candidates) if candidates else []
        if together is not None:
            events, good = together, index
        else:
            events, positions, bad = self._one_by_one(candidates)
            good = index[positions]
            rejected += [(int(index[i]), error) for i, error in bad]
        if events:
            with np.errstate(over="ignore"):  # beyond float32's range: infinite, refused below
                x[good] = np.array(list(map(_X, events)), dtype=np.float32)
            stamps = np.array(list(map(_TS, events)), dtype=object)  # None: no ts, the record's
            missing = np.flatnonzero(np.equal(stamps, None))  # type: ignore[call-overload]
            if len(missing):
                stamps[missing] = record_ts(good[missing].tolist())
            ts[good] = stamps.astype(np.int64)
            reset[good] = list(map(_RESET, events))
            end[good] = list(map(_END, events))
            ok[good] = True
            infinite = good[~np.isfinite(x[good]).all(axis=1)]  # beyond float32's range
            if len(infinite):
                ok[infinite] = False
                rejected += [
                    (i, CodecError("non_finite", "x holds a number beyond float32 range")) for i in infinite.tolist()
                ]
        rejected.sort(key=lambda item: item[0])
        return DecodedEvents(ok, x, ts, reset, end, rejected)


class JsonPrediction(msgspec.Struct):
    y: list[float]
    ts: int
    src: tuple[int, int]
    step: int
    model: str


class JsonPredictionEncoder:
    def __init__(self, model: str) -> None:
        self.model = model
        self._encoder = msgspec.json.Encoder()

    def encode(
        self, y: np.ndarray, ts: np.ndarray, partition: np.ndarray, offset: np.ndarray, step: np.ndarray
    ) -> list[bytes]:
        records = list(
            map(
                JsonPrediction,
                y.tolist(),
                ts.tolist(),
                zip(partition.tolist(), offset.tolist(), strict=True),
                step.tolist(),
                repeat(self.model),
            )
        )
        return self._encoder.encode_lines(records).split(b"\n")[:-1]


_PREDICTION = msgspec.json.Decoder(JsonPrediction)


def decode_json_prediction(value: bytes | None) -> Prediction:
    try:
        p = _PREDICTION.decode(value or b"")
    except msgspec.MsgspecError as exc:
        raise _reason(exc) from exc
    return Prediction(p.y, p.src[0], p.src[1], p.step, p.ts, p.model)


def encode_json_event(x: np.ndarray | list[float], ts: int | None, reset: bool, end: bool) -> bytes:
    return msgspec.json.encode(event_fields(np.asarray(x, dtype=np.float32).tolist(), ts, reset, end))
