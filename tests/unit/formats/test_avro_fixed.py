"""Events of the reader schema read by their fixed layout give what fastavro gives, or are left to it.

What must hold (worker/formats/avro_fixed.py): every value read has the x, ts and flags that
fastavro reads from it; a value of any other layout is not read (the decoder hands it to fastavro,
which reads it or says why not). No registry: the bodies are written by fastavro here.
"""

import io

import numpy as np
import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from worker.formats.avro import EVENT_SCHEMA, PREDICTION_SCHEMA, framing
from worker.formats.avro_fixed import avro_long, read_fixed, write_predictions

SCHEMA = parse_schema(EVENT_SCHEMA)
HEAD = framing(7)


def framed(event: dict) -> bytes:
    body = io.BytesIO()
    schemaless_writer(body, SCHEMA, event)
    return HEAD + body.getvalue()


def fastavro_read(value: bytes) -> dict:
    return schemaless_reader(io.BytesIO(value[len(HEAD) :]), SCHEMA, None)


@pytest.mark.parametrize("features", [1, 4, 63, 64, 200])
def test_what_is_read_is_what_fastavro_reads(features):
    rng = np.random.default_rng(features)
    stamps = [None, 0, 1, -1, 63, 64, -65, 1_796_306_298_874, 2**62 - 1, -(2**62)]
    events = [
        {
            "x": rng.standard_normal(features).astype(np.float32).tolist(),
            "ts": stamps[i % len(stamps)],
            "reset": bool(i % 3 == 0),
            "end": bool(i % 5 == 0),
        }
        for i in range(60)
    ]
    values = [framed(e) for e in events]
    got = read_fixed(values, features)
    assert got.ok.all()
    for i, value in enumerate(values):
        want = fastavro_read(value)
        assert got.x[i].tolist() == np.array(want["x"], np.float32).tolist()
        assert (int(got.ts[i]) if got.timed[i] else None) == want["ts"]
        assert (bool(got.reset[i]), bool(got.end[i])) == (want["reset"], want["end"])


def test_values_of_another_layout_are_left_to_fastavro():
    good = framed({"x": [1.0, 2.0, 3.0, 4.0], "ts": 5, "reset": False, "end": False})
    body = good[len(HEAD) :]
    two_blocks = HEAD + avro_long(2) + body[1:9] + avro_long(2) + body[9:17] + body[17:]
    others = [
        framed({"x": [1.0, 2.0, 3.0], "ts": 5, "reset": False, "end": False}),  # 3 numbers, not 4
        two_blocks,  # the same numbers in two blocks
        good[:-1] + b"\x02",  # a flag byte of neither 0 nor 1
        good[:-3],  # cut short
        good + b"\x00",  # a byte after the record
        good[:-3] + b"\x85\x00\x00",  # a long whose bytes end early: its length is not the value's
    ]
    assert fastavro_read(two_blocks) == fastavro_read(good)  # valid Avro all the same
    got = read_fixed([good, *others], 4)
    assert got.ok.tolist() == [True] + [False] * len(others)
    assert got.x[0].tolist() == [1.0, 2.0, 3.0, 4.0] and got.ts[0] == 5


@pytest.mark.parametrize("width", [1, 3, 64])
def test_predictions_are_the_bytes_fastavro_writes(width):
    rng = np.random.default_rng(width)
    schema = parse_schema(PREDICTION_SCHEMA)
    n = 50
    y = rng.standard_normal((n, width)).astype(np.float32)
    extremes = np.array([0, 1, -1, 63, 64, -64, -65, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)], np.int64)
    ts, offset, step = (np.resize(extremes, n)[rng.permutation(n)] for _ in range(3))
    partition = rng.integers(-(2**31), 2**31, n)
    model = "ab12cd34ef56ab78"
    got = write_predictions(HEAD, y, (ts, partition, offset, step), model.encode())
    for i, value in enumerate(got):
        record = {
            "y": y[i].tolist(),
            "ts": int(ts[i]),
            "src": {"partition": int(partition[i]), "offset": int(offset[i])},
            "step": int(step[i]),
            "model": model,
        }
        body = io.BytesIO()
        schemaless_writer(body, schema, record)
        assert value == HEAD + body.getvalue()
    assert write_predictions(HEAD, y[:0], (ts[:0],) * 4, b"m") == []
