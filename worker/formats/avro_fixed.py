"""Avro of the worker's own schemas by their fixed layout, a poll's or a round's records at once.

Events: with `lstm_worker.Event` as the writer schema (what `produce --format avro` and
confluent's AvroSerializer write), an event's body is the array's block count, its float32
numbers, the array's end, the `ts` union's branch and the long in it, the two flags. Values of
one length share every position, so a poll's values are read a length at a time in a few NumPy
calls, not record by record. A value whose bytes are not of that layout (a block count other
than the features', several blocks, a flag byte other than 0 or 1, a varint of another length)
is left to fastavro, which reads any Avro and says why one does not decode.

Predictions: `lstm_worker.Prediction` records are laid out for a whole round into one buffer,
each varint by its length, the bytes fastavro writes (docs/performance.md, "Avro").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEADER = 5  # magic byte 0 and the schema id, big-endian
_LONGEST_VARINT = 9  # bytes of a long read here: up to 63 bits (longer ones are left to fastavro)


def avro_long(value: int) -> bytes:
    """A long in Avro's binary encoding: zigzag, then 7 bits per byte, low bits first."""
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


@dataclass(slots=True)
class FixedEvents:
    """Row i is value i, read where `ok`; `timed` where its `ts` is a long, not null."""

    ok: np.ndarray
    x: np.ndarray  # [values, features] float32
    ts: np.ndarray  # int64
    timed: np.ndarray
    reset: np.ndarray
    end: np.ndarray

    def select(self, rows: np.ndarray) -> FixedEvents:
        return FixedEvents(*(column[rows] for column in (self.ok, self.x, self.ts, self.timed, self.reset, self.end)))


def read_fixed(values: list[bytes], features: int) -> FixedEvents:
    """The events among `values` (framed, of the reader schema) that have the fixed layout."""
    n = len(values)
    out = FixedEvents(
        np.zeros(n, bool), np.zeros((n, features), np.float32), np.zeros(n, np.int64), *np.zeros((3, n), bool)
    )
    if not n:
        return out
    count = np.frombuffer(avro_long(features), np.uint8)
    numbers = HEADER + len(count)  # the first float's byte
    union = numbers + 4 * features + 1  # after the numbers, the array's end (a zero count)
    lengths = np.fromiter(map(len, values), np.int64, n)
    for length in np.unique(lengths).tolist():
        varint = length - union - 3  # the ts long's bytes: the union's branch and the flags take 3
        if varint < 0 or varint > _LONGEST_VARINT:
            continue
        rows = np.flatnonzero(lengths == length)
        blob = np.frombuffer(b"".join([values[i] for i in rows.tolist()]), np.uint8).reshape(len(rows), length)
        ok = (blob[:, HEADER:numbers] == count).all(axis=1) & (blob[:, union - 1] == 0)
        ok &= (blob[:, -2:] <= 1).all(axis=1)
        ok &= blob[:, union] == (2 if varint else 0)  # the branch, zigzag: 1 (long) or 0 (null)
        if varint:
            digits = blob[:, union + 1 : union + 1 + varint]
            ok &= (digits[:, :-1] >= 0x80).all(axis=1) & (digits[:, -1] < 0x80)
            shifts = np.arange(0, 7 * varint, 7, dtype=np.uint64)
            zigzag = ((digits & 0x7F).astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64)
            ts = (zigzag >> np.uint64(1)).astype(np.int64) ^ -(zigzag & np.uint64(1)).astype(np.int64)
            out.ts[rows[ok]] = ts[ok]
            out.timed[rows[ok]] = True
        read = rows[ok]
        out.x[read] = blob[ok, numbers : union - 1].view("<f4")
        out.reset[read], out.end[read] = blob[ok, -2] == 1, blob[ok, -1] == 1
        out.ok[read] = True
    return out


def _zigzag(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longs zigzagged as Avro writes them, and how many bytes each takes (7 bits per byte)."""
    v = values.astype(np.int64)
    zigzag = ((v << 1) ^ (v >> 63)).view(np.uint64)
    size = np.ones(len(v), np.int64)
    for bits in range(7, 64, 7):
        size += zigzag >= np.uint64(1 << bits)
    return zigzag, size


def write_predictions(head: bytes, y: np.ndarray, longs: tuple[np.ndarray, ...], model: bytes) -> list[bytes]:
    """`lstm_worker.Prediction` records, each framed by `head`: the array y (one block), then
    `longs` (ts, src.partition, src.offset, step: Avro writes an int as it writes a long), then the
    model's name, laid out for every record at once into one buffer, then cut."""
    n, width = y.shape
    if not n:
        return []
    lead = np.frombuffer(head + avro_long(width), np.uint8)  # the framing, the block's count
    tail = np.frombuffer(avro_long(len(model)) + model, np.uint8)
    numbers = 4 * width
    encoded = [_zigzag(column) for column in longs]
    lengths = len(lead) + numbers + 1 + sum(size for _, size in encoded) + len(tail)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    buf = np.empty(int(ends[-1]), np.uint8)
    buf[starts[:, None] + np.arange(len(lead))] = lead
    at = starts + len(lead)
    buf[at[:, None] + np.arange(numbers)] = np.ascontiguousarray(y, "<f4").view(np.uint8).reshape(n, numbers)
    at += numbers
    buf[at] = 0  # the array's end
    at += 1
    for zigzag, size in encoded:
        for j in range(int(size.max())):
            more = size > j
            digit = ((zigzag[more] >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
            buf[at[more] + j] = digit | np.where(size[more] > j + 1, 0x80, 0).astype(np.uint8)
        at += size
    buf[at[:, None] + np.arange(len(tail))] = tail
    data = buf.tobytes()
    return [data[start:end] for start, end in zip(starts.tolist(), ends.tolist(), strict=True)]
