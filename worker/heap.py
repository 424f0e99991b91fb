"""glibc's heap: kept between rounds, given back after a restore.

A round's arrays and a commit point's state records are freed and allocated again and again;
with glibc's moving thresholds, whether they reuse memory or fault it in again depends on the
order of earlier frees (docs/performance.md, "Heap thresholds").

`keep_freed_memory` fixes both thresholds at start: allocations up to 32 MB (glibc's own
ceiling for the moving threshold) come from the heap, and up to 128 MB of free memory at
its top is kept for the next round or commit point. `trim_heap` gives free memory back
when a restore, which frees its fetch responses, is done
(docs/performance.md, "Memory after a restore"). Where the C library is not glibc, both do
nothing; `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or malloc tunables in
`GLIBC_TUNABLES` are the operator's choice, and win.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 128 << 20
_OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _libc_function(name: str) -> Any:
    """The C library's function, or None where it has none (not glibc)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc
        return None


def keep_freed_memory() -> bool:
    """Fix glibc's heap thresholds (above); False where left alone."""
    operator_set = any(name in os.environ for name in _OPERATOR_SETTINGS)
    if operator_set or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def trim_heap() -> bool:
    """Give the heap's free memory back to the kernel; False where the C library has no way."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim(0)
    return True
