"""The atheris fuzz target of the codec, for a fixed number of inputs (make fuzz runs longer)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_codec.py"


def test_fuzzing_the_decoders_finds_no_crash():
    done = subprocess.run(
        [sys.executable, str(TARGET), "-runs=20000", "-max_len=4096", "-seed=7"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=TARGET.parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 20000 runs" in done.stderr, done.stderr[-3000:]
