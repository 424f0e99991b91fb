"""Wire formats of worker/codec.py: events, predictions, state records and dead-letter headers.

Every malformed event must become a CodecError carrying the dead-letter reason code, and
nothing else: a hostile record may cost one dead letter, never the worker.
"""

import contextlib
import math
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from worker import codec
from worker.codec import (
    MAX_MAP_LEN,
    WIRE_VERSION,
    EventDecoder,
    Prediction,
    PredictionEncoder,
    StateEncoder,
    dead_letter_headers,
    decode_event,
    decode_prediction,
    decode_state,
    encode_event,
    encode_prediction,
    encode_state,
)
from worker.errors import CodecError

FEATURES = 4
MAX_BYTES = 1024
RECORD_TS = 1_700_000_000_000


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def decode(value, *, features=FEATURES, max_bytes=MAX_BYTES):
    return decode_event(value, features=features, partition=3, offset=41, record_ts=RECORD_TS, max_bytes=max_bytes)


def reason_of(value, **kwargs):
    with pytest.raises(CodecError) as info:
        decode(value, **kwargs)
    return info.value.reason


def f32_bytes(values):
    return np.asarray(values, dtype="<f4").tobytes()


# --- events: the happy paths ---------------------------------------------------------------


def test_event_x_as_list_decodes_to_float32_with_record_defaults():
    event = decode(pack({"x": [1, 2.5, -3, 0.1]}))
    assert event.x.dtype == np.float32
    np.testing.assert_array_equal(event.x, np.array([1, 2.5, -3, 0.1], dtype=np.float32))
    assert (event.partition, event.offset) == (3, 41)
    assert event.ts == RECORD_TS
    assert event.reset is False
    assert event.end is False


def test_event_x_as_float32_bytes_is_bit_exact():
    values = np.array([1.5, -0.0, 3.4e38, 1e-45], dtype="<f4")
    event = decode(pack({"x": values.tobytes()}))
    assert event.x.dtype == np.float32
    assert event.x.tobytes() == values.tobytes()


def test_event_optional_ts_reset_end_are_read():
    event = decode(pack({"x": [0, 0, 0, 0], "ts": 123, "reset": True, "end": True}))
    assert event.ts == 123
    assert event.reset is True
    assert event.end is True


def test_event_explicit_false_flags_and_negative_ts_are_accepted():
    event = decode(pack({"x": [0, 0, 0, 0], "ts": -5, "reset": False, "end": False}))
    assert (event.ts, event.reset, event.end) == (-5, False, False)


def test_event_exactly_max_bytes_is_accepted():
    value = pack({"x": [0, 0, 0, 0]})
    assert decode(value, max_bytes=len(value)).x.shape == (FEATURES,)


# --- events: every dead-letter reason -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(None, "decode", id="null-value"),
        pytest.param(b"", "decode", id="empty-bytes"),
        pytest.param(b"\xc1", "decode", id="reserved-byte"),
        pytest.param(b"\x92\x01", "decode", id="truncated-array"),
        pytest.param(pack({"x": [0, 0, 0, 0]}) + b"\x00", "decode", id="trailing-bytes"),
        pytest.param(b"\x81\xa1x\xa2\xff\xfe", "decode", id="invalid-utf8-string"),
        pytest.param(pack({1: [0, 0, 0, 0]}), "decode", id="int-map-key"),
        pytest.param(b"\x91" * 1000 + b"\xc0", "type", id="deeply-nested-array"),
        pytest.param(pack({"x": [[[[[[0]]]]], 0, 0, 0]}), "type", id="x-nested-lists"),
        pytest.param(pack({"x": [0, 0, 0, 0], "z": {"a": [{"b": [None] * 5}]}}), "type", id="unknown-nested-field"),
        pytest.param(b"\xc7\x03\xff\x00\x00\x00", "decode", id="bad-timestamp-ext"),
        pytest.param(pack([1, 2, 3, 4]), "type", id="array-not-map"),
        pytest.param(pack(7), "type", id="int-not-map"),
        pytest.param(pack("x"), "type", id="string-not-map"),
        pytest.param(pack(None), "type", id="nil-not-map"),
        pytest.param(pack({"x": [0, 0, 0, 0], "y": 1}), "type", id="unknown-field"),
        pytest.param(pack({"x": [0, 0, 0, 0], b"ts": 1}), "type", id="bytes-field-name"),
        pytest.param(pack({}), "missing_field", id="empty-map"),
        pytest.param(pack({"ts": 1, "reset": True}), "missing_field", id="no-x"),
        pytest.param(pack({"x": [0, 0, 0]}), "shape", id="list-too-short"),
        pytest.param(pack({"x": [0, 0, 0, 0, 0]}), "shape", id="list-too-long"),
        pytest.param(pack({"x": []}), "shape", id="list-empty"),
        pytest.param(pack({"x": f32_bytes([0, 0, 0])}), "shape", id="bytes-too-short"),
        pytest.param(pack({"x": f32_bytes([0, 0, 0, 0]) + b"\x00"}), "shape", id="bytes-not-float32-multiple"),
        pytest.param(pack({"x": [0, 0, "1", 0]}), "type", id="list-holds-string"),
        pytest.param(pack({"x": [0, 0, True, 0]}), "type", id="list-holds-bool"),
        pytest.param(pack({"x": [0, 0, None, 0]}), "type", id="list-holds-nil"),
        pytest.param(pack({"x": [0, 0, [1], 0]}), "type", id="list-holds-list"),
        pytest.param(pack({"x": [0, 0, {"a": 1}, 0]}), "type", id="list-holds-map"),
        pytest.param(pack({"x": [0, 0, msgpack.ExtType(5, b"ab"), 0]}), "type", id="list-holds-ext"),
        pytest.param(pack({"x": "1,2,3,4"}), "type", id="x-string"),
        pytest.param(pack({"x": 1.0}), "type", id="x-float"),
        pytest.param(pack({"x": None}), "type", id="x-nil"),
        pytest.param(pack({"x": {"0": 1}}), "type", id="x-map"),
        pytest.param(pack({"x": msgpack.ExtType(1, f32_bytes([0, 0, 0, 0]))}), "type", id="x-ext"),
        pytest.param(pack({"x": [0, math.nan, 0, 0]}), "non_finite", id="list-nan"),
        pytest.param(pack({"x": [0, 0, math.inf, 0]}), "non_finite", id="list-inf"),
        pytest.param(pack({"x": [-math.inf, 0, 0, 0]}), "non_finite", id="list-minus-inf"),
        pytest.param(pack({"x": f32_bytes([0, 0, 0, np.nan])}), "non_finite", id="bytes-nan"),
        pytest.param(pack({"x": f32_bytes([np.inf, 0, 0, 0])}), "non_finite", id="bytes-inf"),
        pytest.param(pack({"x": [0, 0, 0, 0], "ts": 1.5}), "type", id="ts-float"),
        pytest.param(pack({"x": [0, 0, 0, 0], "ts": "123"}), "type", id="ts-string"),
        pytest.param(pack({"x": [0, 0, 0, 0], "ts": True}), "type", id="ts-bool"),
        pytest.param(pack({"x": [0, 0, 0, 0], "ts": None}), "type", id="ts-nil"),
        pytest.param(pack({"x": [0, 0, 0, 0], "ts": [1]}), "type", id="ts-list"),
        pytest.param(b"\x82\xa1x\x94\x00\x00\x00\x00\xa2ts\xd6\xff\x00\x00\x00\x01", "type", id="ts-timestamp-ext"),
        pytest.param(pack({"x": [0, 0, 0, 0], "reset": 1}), "type", id="reset-int"),
        pytest.param(pack({"x": [0, 0, 0, 0], "reset": "true"}), "type", id="reset-string"),
        pytest.param(pack({"x": [0, 0, 0, 0], "reset": None}), "type", id="reset-nil"),
        pytest.param(pack({"x": [0, 0, 0, 0], "end": 0}), "type", id="end-int"),
        pytest.param(pack({"x": [0, 0, 0, 0], "end": msgpack.ExtType(2, b"")}), "type", id="end-ext"),
        pytest.param(pack({"x": [0, 0, 0, 0], "end": [True]}), "type", id="end-list"),
    ],
)
def test_bad_event_gives_reason_code(value, reason):
    assert reason_of(value) == reason


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_event_number_beyond_float32_range_is_non_finite():
    assert reason_of(pack({"x": [0, 1e300, 0, 0]})) == "non_finite"


def test_event_nested_beyond_the_unpacker_stack_is_decode():
    assert reason_of(b"\x91" * 5000 + b"\xc0", max_bytes=10_000) == "decode"


def test_event_larger_than_max_bytes_is_too_large_before_decoding():
    assert reason_of(pack({"x": [0, 0, 0, 0]}), max_bytes=5) == "too_large"
    assert reason_of(b"\xc1" * 6, max_bytes=5) == "too_large"


def test_unknown_field_detail_names_the_field():
    with pytest.raises(CodecError) as info:
        decode(pack({"x": [0, 0, 0, 0], "colour": 1, "alpha": 2}))
    assert "alpha" in info.value.detail
    assert "colour" in info.value.detail


def test_codec_error_carries_reason_and_detail():
    with pytest.raises(CodecError) as info:
        decode(pack({"x": [0, 0, 0]}))
    assert info.value.reason == "shape"
    assert "3" in info.value.detail
    assert str(info.value).startswith("shape: ")


def test_every_reason_code_of_the_event_decoder():
    bad = {
        "decode": None,
        "type": pack([]),
        "missing_field": pack({}),
        "shape": pack({"x": [0]}),
        "non_finite": pack({"x": [math.nan] * FEATURES}),
        "too_large": b"\x00" * (MAX_BYTES + 1),
    }
    assert {reason: reason_of(value) for reason, value in bad.items()} == {reason: reason for reason in bad}


# --- events: properties -----------------------------------------------------------------------

# Hypothesis settings shared by the property tests: no example database written into the
# repository, and a seed-independent search so a failure here fails on every run.
PROPERTY = settings(
    max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=24)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
event_like_maps = st.dictionaries(
    st.sampled_from(["x", "ts", "reset", "end", "other"]),
    msgpack_values
    | st.lists(st.floats(width=32) | st.integers(-(2**63), 2**64 - 1), min_size=FEATURES, max_size=FEATURES),
    max_size=5,
)


def _decodes_or_codec_error(value):
    try:
        event = decode(value)
    except CodecError as exc:
        assert exc.reason in {"decode", "type", "missing_field", "shape", "non_finite", "too_large"}
    else:
        assert event.x.shape == (FEATURES,)
        assert np.isfinite(event.x).all()


@PROPERTY
@given(st.binary(max_size=2 * MAX_BYTES))
def test_decode_event_on_arbitrary_bytes_raises_only_codec_error(value):
    _decodes_or_codec_error(value)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@PROPERTY
@given(event_like_maps)
def test_decode_event_on_arbitrary_maps_raises_only_codec_error(obj):
    _decodes_or_codec_error(pack(obj))


finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
timestamps = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)


@PROPERTY
@given(st.lists(finite_f32, min_size=FEATURES, max_size=FEATURES), timestamps, st.booleans(), st.booleans())
def test_event_round_trip_with_ndarray_is_bit_exact(values, ts, reset, end):
    x = np.array(values, dtype=np.float32)
    event = decode(encode_event(x, ts=ts, reset=reset, end=end))
    assert event.x.tobytes() == x.astype("<f4").tobytes()
    assert event.ts == (RECORD_TS if ts is None else ts)
    assert (event.reset, event.end) == (reset, end)


@PROPERTY
@given(st.lists(finite_f32, min_size=FEATURES, max_size=FEATURES), timestamps, st.booleans(), st.booleans())
def test_event_round_trip_with_list(values, ts, reset, end):
    event = decode(encode_event(values, ts=ts, reset=reset, end=end))
    np.testing.assert_array_equal(event.x, np.array(values, dtype=np.float32))
    assert event.ts == (RECORD_TS if ts is None else ts)
    assert (event.reset, event.end) == (reset, end)


def test_encode_event_wire_layout():
    assert msgpack.unpackb(encode_event([1.0, 2.0])) == {"x": [1.0, 2.0]}
    assert msgpack.unpackb(encode_event(np.array([1.0, 2.0]), ts=0, reset=True, end=True)) == {
        "x": f32_bytes([1.0, 2.0]),
        "ts": 0,
        "reset": True,
        "end": True,
    }


# --- events: limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(b"\xdd\xff\xff\xff\xff", "decode", id="array32-claims-4G-items"),
        pytest.param(b"\xdf\xff\xff\xff\xff", "decode", id="map32-claims-4G-pairs"),
        pytest.param(b"\xc6\xff\xff\xff\xff", "decode", id="bin32-claims-4GB"),
        pytest.param(b"\xdb\xff\xff\xff\xff", "decode", id="str32-claims-4GB"),
        pytest.param(b"\x81\xa1x" + b"\x91" * 100_000 + b"\xc0", "decode", id="nested-100k-deep"),
        pytest.param(b"\x81\xa1x" + b"\xdc\xff\xff" * 1000, "decode", id="nested-headers-claiming-64k-items"),
        pytest.param(pack({"x": [0] * 100}), "decode", id="array-far-over-features"),
        pytest.param(pack({f"k{i}": 0 for i in range(MAX_MAP_LEN + 1)}), "decode", id="map-over-limit"),
        pytest.param(pack(msgpack.ExtType(1, b"\x00" * 16)), "type", id="ext-at-top"),
        pytest.param(pack({"x": [0, 0, 0, 0], "ts": msgpack.Timestamp(1, 0)}), "type", id="timestamp-ext"),
    ],
)
def test_hostile_containers_are_refused_cheaply(value, reason):
    assert reason_of(value, max_bytes=1 << 30) == reason


@PROPERTY
@given(st.binary(min_size=1, max_size=4096))
def test_decoding_allocates_in_proportion_to_the_record(value):
    tracemalloc.start()
    try:
        with contextlib.suppress(CodecError):
            decode(value, max_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 256 * len(value) + 64 * 1024


# --- events: the batch decoder ----------------------------------------------------------------


def _outcome(result):
    """Comparable form of a decode result: the event's fields, or the error's reason."""
    if isinstance(result, CodecError):
        return ("error", result.reason)
    return (result.x.tobytes(), result.ts, result.reset, result.end)


def _record_ts(stamps, asked=None):
    """The decoder's record_ts over these records' timestamps; `asked` collects the indexes."""

    def record_ts(indexes):
        if asked is not None:
            asked.extend(indexes)
        return [stamps[i] for i in indexes]

    return record_ts


def _outcomes(decoded):
    """Per value, what EventDecoder.decode made of it, in _outcome's form."""
    rejected = dict(decoded.rejected)
    assert not decoded.ok[list(rejected)].any()
    return [
        ("error", rejected[i].reason)
        if i in rejected
        else (decoded.x[i].tobytes(), int(decoded.ts[i]), bool(decoded.reset[i]), bool(decoded.end[i]))
        for i in range(len(decoded.ok))
    ]


fast_path_values = st.builds(
    lambda v, ts: encode_event(np.array(v, dtype=np.float32), ts=ts),
    st.lists(st.floats(width=32), min_size=FEATURES, max_size=FEATURES),
    st.none() | st.integers(0, 2**64 - 1) | st.sampled_from([2**32, 2**63 - 1, 2**63, 2**64 - 1]),
)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@PROPERTY
@given(st.lists(fast_path_values | event_like_maps.map(pack) | st.binary(max_size=64) | st.none(), max_size=12))
def test_decode_gives_what_decode_event_gives_record_by_record(values):
    stamps = [RECORD_TS + i for i in range(len(values))]
    expected = []
    for value, record_ts in zip(values, stamps, strict=True):
        try:
            expected.append(
                decode_event(value, features=FEATURES, partition=2, offset=0, record_ts=record_ts, max_bytes=MAX_BYTES)
            )
        except CodecError as exc:
            expected.append(exc)
    got = EventDecoder(FEATURES, MAX_BYTES).decode(values, _record_ts(stamps))
    assert _outcomes(got) == list(map(_outcome, expected))
    assert got.ok.tolist() == [not isinstance(e, CodecError) for e in expected]


@pytest.mark.parametrize("ts", [None, 1_795_905_342_136, 2**63 - 1])
def test_decode_takes_the_fast_path_for_float32_events_with_or_without_ts(ts, monkeypatch):
    values = np.arange(12, dtype=np.float32).reshape(3, FEATURES)
    encoded = [encode_event(row, ts=ts) for row in values]
    encoded.append(encode_event(np.array([0, np.inf, 0, 0], dtype=np.float32), ts=ts))
    monkeypatch.setattr(codec, "_event_fields", lambda *a, **k: pytest.fail("took the general decoder"))
    asked = []
    got = EventDecoder(FEATURES, MAX_BYTES).decode(encoded, _record_ts([RECORD_TS] * 4, asked))
    assert asked == ([0, 1, 2, 3] if ts is None else [])  # a record's own timestamp only for events without one
    np.testing.assert_array_equal(got.x[:3], values)
    assert got.ts[:3].tolist() == [RECORD_TS if ts is None else ts] * 3
    assert got.ok.tolist() == [True, True, True, False]
    assert [(i, e.reason) for i, e in got.rejected] == [(3, "non_finite")]


@pytest.mark.parametrize("ts", [2**63, 2**64 - 1])
def test_a_ts_beyond_int64_is_refused_not_wrapped(ts):
    """Predictions, states and stream time hold ts as int64: a larger one would wrap or crash."""
    value = encode_event(np.zeros(FEATURES, np.float32), ts=ts)
    got = EventDecoder(FEATURES, MAX_BYTES).decode([value], _record_ts([0]))
    assert not got.ok[0]
    ((i, error),) = got.rejected
    assert (i, error.reason) == (0, "type") and "64-bit" in error.detail


def test_decode_refuses_a_common_shape_longer_than_max_bytes():
    value = encode_event(np.zeros(FEATURES, dtype=np.float32), ts=RECORD_TS)
    got = EventDecoder(FEATURES, len(value) - 1).decode([value], _record_ts([RECORD_TS]))
    assert [(i, e.reason) for i, e in got.rejected] == [(0, "too_large")]


# --- predictions ------------------------------------------------------------------------------


@PROPERTY
@given(
    st.lists(st.floats(allow_nan=False), max_size=8),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**63 - 1),
    st.text(max_size=40),
)
def test_prediction_round_trip(y, ts, partition, offset, step, model):
    out = decode_prediction(encode_prediction(y, ts=ts, partition=partition, offset=offset, step=step, model=model))
    assert out == Prediction(y, partition, offset, step, ts, model)


def test_prediction_encoder_writes_one_record_per_row():
    encoder = PredictionEncoder(2, "fp-1")
    y = np.array([[0.25, -1.5], [1e-30, 3.0], [0.0, 7.0]])
    values = encoder.encode(
        y, np.array([5, -6, 7]), np.array([0, 1, 11]), np.array([10, 2**40, 0]), np.array([1, 2, 3])
    )
    assert [msgpack.unpackb(v) for v in values] == [
        {"v": WIRE_VERSION, "y": [0.25, -1.5], "ts": 5, "src": [0, 10], "step": 1, "model": "fp-1"},
        {"v": WIRE_VERSION, "y": [1e-30, 3.0], "ts": -6, "src": [1, 2**40], "step": 2, "model": "fp-1"},
        {"v": WIRE_VERSION, "y": [0.0, 7.0], "ts": 7, "src": [11, 0], "step": 3, "model": "fp-1"},
    ]


def test_prediction_encoder_grows_past_its_template():
    encoder = PredictionEncoder(1, "m")
    n = 1000
    values = encoder.encode(np.ones((n, 1)), *(np.arange(n) for _ in range(4)))
    assert len(values) == n
    assert decode_prediction(values[-1]) == Prediction([1.0], n - 1, n - 1, n - 1, n - 1, "m")


@pytest.mark.parametrize(
    "value",
    [
        pack({"src": [0, 1]}),
        pack({"y": [1.0]}),
        pack({"y": 1.0, "src": [0, 1]}),
        pack({"y": [1.0], "src": "0:1"}),
        pack([1.0]),
        b"\xc1",
    ],
)
def test_bad_prediction_is_codec_error(value):
    with pytest.raises(CodecError):
        decode_prediction(value)


# --- state records ----------------------------------------------------------------------------

SIZES = [3, 3, 2]


def state_record(**overrides):
    obj = {"v": 1, "model": "fp", "step": 7, "src": [2, 99], "ts": 5, "s": [f32_bytes([0] * s) for s in SIZES]}
    obj.update(overrides)
    return pack(obj)


@st.composite
def states(draw):
    sizes = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    state = draw(st.lists(st.floats(width=32), min_size=sum(sizes), max_size=sum(sizes)))
    return sizes, np.array(state, dtype=np.float32)


@PROPERTY
@given(
    states(),
    st.text(max_size=20),
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**31 - 1),
    st.integers(-1, 2**63 - 1),
    st.integers(-(2**63), 2**63 - 1),
)
def test_state_round_trip_is_bit_exact(sizes_and_state, model, step, partition, offset, ts):
    sizes, state = sizes_and_state
    value = encode_state(state, sizes, model=model, step=step, partition=partition, offset=offset, ts=ts)
    record = decode_state(value, sizes)
    assert record.state.dtype == np.float32
    assert record.state.tobytes() == state.astype("<f4").tobytes()  # NaN payloads and -0.0 included
    assert (record.model, record.step, record.src_partition, record.src_offset, record.ts) == (
        model,
        step,
        partition,
        offset,
        ts,
    )


def test_state_encoder_writes_one_record_per_row():
    states = np.arange(2 * sum(SIZES), dtype=np.float32).reshape(2, -1)
    values = StateEncoder(SIZES, "fp").encode(
        states, np.array([1, 7]), np.array([0, 3]), np.array([-1, 2**40]), np.array([5, -5])
    )
    decoded = [decode_state(v, SIZES) for v in values]
    assert [(r.model, r.step, r.src_partition, r.src_offset, r.ts) for r in decoded] == [
        ("fp", 1, 0, -1, 5),
        ("fp", 7, 3, 2**40, -5),
    ]
    np.testing.assert_array_equal(np.stack([r.state for r in decoded]), states)
    with pytest.raises(ValueError, match="needs"):
        StateEncoder(SIZES, "fp").encode(states[:, :3], *(np.zeros(2, np.int64) for _ in range(4)))


def test_state_decode_many_takes_only_records_of_its_own_layout():
    encoder = StateEncoder(SIZES, "fp")
    states = np.arange(3 * sum(SIZES), dtype=np.float32).reshape(3, -1)
    ints = [np.array([1, 2, 3]), np.array([0, 0, 0]), np.array([10, 11, 12]), np.array([5, 6, 7])]
    a, b, c = encoder.encode(states, *ints)
    bad = states[2].copy()
    bad[0] = np.nan
    nan_value = encoder.encode(bad[None], *(v[:1] for v in ints))[0]
    values = [a, None, encode_state(states[0], SIZES, model="other", step=1, partition=0, offset=1, ts=1), b, nan_value]
    values += [c[:-1], c]
    indexes, batch = encoder.decode_many(values)
    assert indexes.tolist() == [0, 3, 6]
    np.testing.assert_array_equal(batch.states, states)
    assert (
        batch.step.tolist() == [1, 2, 3]
        and batch.src_offset.tolist() == [10, 11, 12]
        and batch.ts.tolist() == [5, 6, 7]
    )
    for j, i in enumerate(indexes.tolist()):  # what the general decoder reads from the same bytes
        record = decode_state(values[i], SIZES)
        assert (record.step, record.src_offset, record.ts) == (batch.step[j], batch.src_offset[j], batch.ts[j])


def test_state_wire_layout_has_one_bin_per_tensor():
    state = np.arange(8, dtype=np.float32)
    obj = msgpack.unpackb(encode_state(state, SIZES, model="fp", step=1, partition=0, offset=9, ts=3))
    assert obj["v"] == WIRE_VERSION
    assert obj["src"] == [0, 9]
    assert obj["s"] == [f32_bytes([0, 1, 2]), f32_bytes([3, 4, 5]), f32_bytes([6, 7])]


@pytest.mark.parametrize(
    ("value", "sizes", "reason"),
    [
        pytest.param(state_record(), [3, 3, 3], "shape", id="tensor-too-short"),
        pytest.param(state_record(), [4, 2, 2], "shape", id="same-total-other-split"),
        pytest.param(state_record(), [8], "shape", id="one-tensor-expected"),
        pytest.param(state_record(), [3, 3, 2, 1], "shape", id="tensor-missing"),
        pytest.param(state_record(s=[f32_bytes([0] * 8)]), SIZES, "shape", id="tensors-concatenated"),
        pytest.param(state_record(s=[[0.0] * 3, [0.0] * 3, [0.0] * 2]), SIZES, "shape", id="tensor-as-list"),
        pytest.param(state_record(s=f32_bytes([0] * 8)), SIZES, "shape", id="s-not-list"),
        pytest.param(state_record(v=2), SIZES, "version", id="version-2"),
        pytest.param(state_record(v=0), SIZES, "version", id="version-0"),
        pytest.param(state_record(v="1"), SIZES, "version", id="version-string"),
        pytest.param(pack({"model": "fp", "step": 1, "src": [0, 1], "ts": 0, "s": []}), [], "version", id="no-version"),
        pytest.param(pack({"v": 1, "step": 1, "src": [0, 1], "ts": 0, "s": []}), [], "type", id="no-model"),
        pytest.param(pack({"v": 1, "model": "fp", "src": [0, 1], "ts": 0, "s": []}), [], "type", id="no-step"),
        pytest.param(pack({"v": 1, "model": "fp", "step": 1, "ts": 0, "s": []}), [], "type", id="no-src"),
        pytest.param(pack({"v": 1, "model": "fp", "step": 1, "src": [0, 1], "s": []}), [], "type", id="no-ts"),
        pytest.param(pack({"v": 1, "model": "fp", "step": 1, "src": [0, 1], "ts": 0}), [], "type", id="no-s"),
        pytest.param(state_record(src=[1, 2, 3]), SIZES, "type", id="src-three-items"),
        pytest.param(state_record(src=5), SIZES, "type", id="src-int"),
        pytest.param(state_record(step=None), SIZES, "type", id="step-nil"),
        pytest.param(state_record(step="seven"), SIZES, "type", id="step-word"),
        pytest.param(pack([1]), SIZES, "type", id="not-a-map"),
        pytest.param(b"\xc1", SIZES, "decode", id="not-msgpack"),
        pytest.param(None, SIZES, "decode", id="tombstone"),
    ],
)
def test_bad_state_record_gives_reason_code(value, sizes, reason):
    with pytest.raises(CodecError) as info:
        decode_state(value, sizes)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"step": math.inf}, id="step-infinite"),
        pytest.param({"ts": -math.inf}, id="ts-infinite"),
        pytest.param({"src": [0, math.inf]}, id="src-offset-infinite"),
        pytest.param({"step": math.nan}, id="step-nan"),
    ],
)
def test_state_record_with_non_finite_numbers_is_codec_error(overrides):
    """A corrupt state record must cost one CodecError, never an OverflowError in the restore."""
    with pytest.raises(CodecError):
        decode_state(state_record(**overrides), SIZES)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"step": "7"}, id="step-numeric-string"),
        pytest.param({"ts": 5.9}, id="ts-float"),
        pytest.param({"src": b"\x02\x63"}, id="src-bytes"),
        pytest.param({"src": [2.5, 99]}, id="src-float-partition"),
        pytest.param({"v": True}, id="version-bool"),
        pytest.param({"model": 12}, id="model-int"),
    ],
)
def test_state_record_with_wrong_field_types_is_codec_error(overrides):
    """The module promises to refuse any type it does not expect: no silent conversion, no crash."""
    with pytest.raises(CodecError):
        decode_state(state_record(**overrides), SIZES)


state_like_maps = st.fixed_dictionaries(
    {},
    optional={
        "v": st.just(1) | msgpack_scalars,
        "model": st.just("fp") | msgpack_scalars,
        "step": st.integers(0, 10) | msgpack_scalars,
        "src": st.lists(st.integers(0, 10) | msgpack_scalars, min_size=2, max_size=2) | msgpack_scalars,
        "ts": st.integers(0, 10) | msgpack_scalars,
        "s": st.just([f32_bytes([0] * s) for s in SIZES]) | msgpack_values,
    },
)


@PROPERTY
@given(state_like_maps)
@example({"v": 1, "model": "fp", "step": math.inf, "src": [0, 1], "ts": 0, "s": []})
def test_decode_state_on_arbitrary_maps_raises_only_codec_error(obj):
    try:
        record = decode_state(pack(obj), SIZES)
    except CodecError:
        return
    assert record.state.shape == (sum(SIZES),)


@PROPERTY
@given(st.binary(max_size=256))
def test_decode_state_on_arbitrary_bytes_raises_only_codec_error(value):
    with contextlib.suppress(CodecError):
        decode_state(value, SIZES)


# --- dead letters -----------------------------------------------------------------------------


def test_dead_letter_headers_content_and_order():
    headers = dead_letter_headers("shape", "x has 3 numbers, expected 4", "events", 5, 1234)
    assert headers == [
        ("error", b"shape"),
        ("error.detail", b"x has 3 numbers, expected 4"),
        ("src.topic", b"events"),
        ("src.partition", b"5"),
        ("src.offset", b"1234"),
    ]


def test_dead_letter_detail_is_capped_and_always_utf8():
    headers = dict(dead_letter_headers("decode", "é" * 5000, "t", 0, 0))
    assert headers["error.detail"] == ("é" * 1000).encode()
    lone_surrogate = dict(dead_letter_headers("decode", "bad \udc80 byte", "t", 0, 0))
    assert lone_surrogate["error.detail"] == b"bad ? byte"


def test_dead_letter_headers_from_a_codec_error():
    with pytest.raises(CodecError) as info:
        decode(pack({"x": [0, math.nan, 0, 0]}))
    headers = dict(dead_letter_headers(info.value.reason, info.value.detail, "events", 3, 41))
    assert headers["error"] == b"non_finite"
    assert headers["error.detail"] == info.value.detail.encode()
    assert (headers["src.partition"], headers["src.offset"]) == (b"3", b"41")
