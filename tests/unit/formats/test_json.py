"""JSON events and predictions (worker/formats/json.py): a poll decoded in one call gives what
each value decoded alone gives, and every hostile value is refused with its reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.formats import event_decoder, event_encoder, prediction_decoder, prediction_encoder
from worker.formats.json import JsonEventDecoder

FEATURES = 4


def decode(values, record_ts=None, max_bytes=100_000):
    asked: list[list[int]] = []

    def stamps(indexes):
        asked.append(list(indexes))
        return [1000 + i for i in indexes] if record_ts is None else record_ts(indexes)

    return JsonEventDecoder(FEATURES, max_bytes).decode(values, stamps), asked


def test_a_poll_of_events_becomes_columns_and_only_untimed_events_ask_their_record_ts():
    values = [
        b'{"x": [1, 2, 3, 4]}',
        b'{"x": [0.5, -1.5, 2.25, 1e-3], "ts": 77, "reset": true}',
        b'{"end": true, "x": [0, 0, 0, 0]}',
    ]
    decoded, asked = decode(values)
    assert decoded.ok.tolist() == [True, True, True] and decoded.rejected == []
    np.testing.assert_array_equal(decoded.x, np.array([[1, 2, 3, 4], [0.5, -1.5, 2.25, 1e-3], [0, 0, 0, 0]], "f4"))
    assert decoded.ts.tolist() == [1000, 77, 1002] and asked == [[0, 2]]
    assert decoded.reset.tolist() == [False, True, False] and decoded.end.tolist() == [False, False, True]


HOSTILE = [
    (b'{"x": [1, 2, 3', "decode"),
    (b'\xff{"x": [1, 2, 3, 4]}', "decode"),
    (b'{"x": [1, 2, 3, 4], "\xff": 1}', "decode"),
    (b'{"x": [NaN, 0, 0, 0]}', "decode"),
    (b'{"x": [-Infinity, 0, 0, 0]}', "decode"),
    (b'{"x": [1, 2, 3, 4]} {"x": [1, 2, 3, 4]}', "decode"),
    (b'{"x": [1, 2, 3, 4]}\n{"x": [5, 6, 7, 8]}', "decode"),  # one value, two lines: never two events
    (b"", "decode"),
    (b"   ", "decode"),
    (b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "type"),
    (b'{"x": [0, 0, 0, 0], "pad": ' + b"[" * 5000 + b"]" * 5000 + b"}", "type"),
    (b'{"x": [1e400, 0, 0, 0]}', "non_finite"),
    (b'{"x": [-1e39, 0, 0, 0]}', "non_finite"),
    (b'{"x": [1, 2, 3, 4], "ts": 9223372036854775808}', "type"),
    (b'{"x": [1, 2, 3, 4], "ts": 1.5}', "type"),
    (b'{"x": [1, 2, 3, 4], "reset": 1}', "type"),
    (b'{"x": [1, 2, 3, "4"]}', "type"),
    (b'{"x": [1, 2, 3, 4], "y": 1}', "type"),
    (b'"x"', "type"),
    (b'{"x": [1, 2, 3]}', "shape"),
    (b'{"x": [1, 2, 3, 4, 5]}', "shape"),
    (b'{"ts": 5}', "missing_field"),
]


@pytest.mark.parametrize(("value", "reason"), HOSTILE, ids=[reason for _, reason in HOSTILE])
def test_a_hostile_value_is_refused_with_its_reason_and_its_neighbours_still_decode(value, reason):
    good = b'{"x": [1, 2, 3, 4], "ts": 5}'
    decoded, _ = decode([good, value, good])
    assert [(i, e.reason) for i, e in decoded.rejected] == [(1, reason)], decoded.rejected
    assert decoded.ok.tolist() == [True, False, True]
    assert decoded.x[[0, 2]].tolist() == [[1, 2, 3, 4]] * 2 and decoded.ts[[0, 2]].tolist() == [5, 5]


def test_null_and_oversized_values_are_refused_before_decoding():
    decoded, _ = decode([None, b'{"x": [1, 2, 3, 4]}', b'{"x": [1, 2, 3, 4]}' + b" " * 100], max_bytes=50)
    assert [(i, e.reason) for i, e in decoded.rejected] == [(0, "decode"), (2, "too_large")]
    assert decoded.ok.tolist() == [False, True, False]


_number = st.one_of(st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6, allow_nan=False, width=32))
_event = st.fixed_dictionaries(
    {"x": st.lists(_number, min_size=FEATURES, max_size=FEATURES)},
    optional={"ts": st.integers(0, 2**62), "reset": st.booleans(), "end": st.booleans()},
)
_value = st.one_of(_event.map(lambda e: json.dumps(e).encode()), st.binary(max_size=40))


@given(st.lists(_value, max_size=12))
def test_a_poll_decoded_together_equals_each_value_decoded_alone(values):
    together, _ = decode(values)
    alone = [decode([value])[0] for value in values]
    assert together.ok.tolist() == [bool(a.ok[0]) for a in alone]
    assert [(i, e.reason) for i, e in together.rejected] == [
        (i, a.rejected[0][1].reason) for i, a in enumerate(alone) if a.rejected
    ]
    for i, a in enumerate(alone):
        if a.ok[0]:
            assert together.x[i].tolist() == a.x[0].tolist()
            assert (together.reset[i], together.end[i]) == (a.reset[0], a.end[0])


def test_predictions_round_trip_and_read_as_plain_json():
    y = np.array([[0.25], [-1.5]], dtype=np.float32)
    ints = [np.array(v, dtype=np.int64) for v in ([10, 20], [0, 3], [7, 8], [1, 2])]
    values = prediction_encoder("json", 1, "fp123", "out").encode(y, *ints)
    assert [json.loads(v) for v in values] == [
        {"y": [0.25], "ts": 10, "src": [0, 7], "step": 1, "model": "fp123"},
        {"y": [-1.5], "ts": 20, "src": [3, 8], "step": 2, "model": "fp123"},
    ]
    read = prediction_decoder("json", "out")(values[1])
    assert (read.y, read.partition, read.offset, read.step, read.ts, read.model) == ([-1.5], 3, 8, 2, 20, "fp123")


def test_the_json_producer_writes_what_the_decoder_reads():
    encode = event_encoder("json", "events")
    values = [encode(np.array([1, 2, 3, 4], "f4"), None, False, False), encode([0.5] * 4, 9, True, True)]
    decoded = event_decoder("json", FEATURES, 1000).decode(values, lambda indexes: [0] * len(indexes))
    assert decoded.ok.all() and decoded.ts.tolist() == [0, 9] and decoded.reset.tolist() == [False, True]
