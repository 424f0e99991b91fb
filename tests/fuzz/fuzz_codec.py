"""Coverage-guided fuzzing of the wire-format decoders with atheris (libFuzzer).

Any input may only ever end in the codec's own CodecError: anything else is a crash that
libFuzzer reports with the input that caused it. `make fuzz` runs it for FUZZ_SECONDS;
tests/unit/test_fuzz.py runs a fixed number of inputs in `make test`.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from worker.codec import CodecError, EventDecoder, decode_prediction, decode_state

FEATURES, MAX_BYTES, SIZES = 4, 4096, [3, 3, 2]
_DECODER = EventDecoder(FEATURES, MAX_BYTES)


def one_input(data: bytes) -> None:
    for decode in (
        lambda: _DECODER.decode([data, data[:20]], lambda indexes: [0] * len(indexes)),
        lambda: decode_state(data, SIZES),
        lambda: decode_prediction(data),
    ):
        with contextlib.suppress(CodecError):
            decode()


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
