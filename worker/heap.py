"""glibc's heap: kept between rounds, given back after a restore.

A round allocates and frees its arrays (a few hundred KB to tens of MB) and a commit point
its state records (2.4 KB each of the reference model, 24 MB for 10,000 keys). glibc moves
its threshold for mapping an allocation of its own (`mmap`) up to the largest one freed so
far, and gives the top of its heap back to the kernel once over twice that, so whether a
worker faults its round memory in again and again depended on which sizes it had freed
first: in live runs at 25,500 events/s, 14 of 24 worker processes took 426-11,183 page
faults a second on the loop thread and had p99 69-874 ms (the others 35-89 ms); with the
thresholds fixed, each of 15 took at most 61 a second (throwaway runs: BENCHMARKS.md
analysis). On the benchmark's VM, whose host backs memory again only when it is touched, a
fault costs far more than on bare metal.

`keep_freed_memory` fixes both thresholds at start: allocations up to 32 MB (glibc's own
ceiling for the moving threshold) come from the heap, and up to 128 MB of free memory at
its top is kept for the next round or commit point. `trim_heap` gives free memory back
when a restore, which frees 2.4 GB of fetch responses, is done. Where the C library is not
glibc, both do nothing; `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or malloc
tunables in `GLIBC_TUNABLES` are the operator's choice, and win.
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
