"""Coverage-guided fuzzing of the wire-format decoders with atheris (libFuzzer).

Any input may only ever end in the codec's own CodecError (a poll's decoders list it among their
rejections): anything else is a crash that libFuzzer reports with the input that caused it.
`make fuzz` runs it for FUZZ_SECONDS; tests/unit/test_fuzz.py runs a fixed number of inputs in
`make test`.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from worker.codec import CodecError, EventDecoder, decode_prediction, decode_state
    from worker.formats.json import JsonEventDecoder, decode_json_prediction

FEATURES, MAX_BYTES, SIZES = 4, 4096, [3, 3, 2]
_DECODERS = (EventDecoder(FEATURES, MAX_BYTES), JsonEventDecoder(FEATURES, MAX_BYTES))


def _no_ts(indexes: list[int]) -> list[int]:
    return [0] * len(indexes)


def one_input(data: bytes) -> None:
    for decoder in _DECODERS:  # the batch of a poll: a decoder's rejections never raise
        decoder.decode([data, data[:20], data[20:]], _no_ts)
    for decode in (
        lambda: decode_state(data, SIZES),
        lambda: decode_prediction(data),
        lambda: decode_json_prediction(data),
    ):
        with contextlib.suppress(CodecError):
            decode()


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
