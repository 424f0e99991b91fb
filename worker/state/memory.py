"""The restore's memory: the cache's rows in small pages, faulted in ahead of the restore.

The cache's rows live on a private anonymous mapping of their own (`zeroed_rows`), in 4 KB pages:
NumPy's 2 MB pages cost far more to fault in (docs/performance.md, "The cache's pages"; the
thread below: "Prefault").

A restore writes each key's state into a row never used before, and the first write to a page
faults it in, on the loop thread. Linux's `madvise(MADV_POPULATE_WRITE)` (5.14) faults pages in
without changing what they hold, and ctypes releases the GIL around the call, so a thread
(`Prefault`) does it beside the loop. It keeps at most `ahead_bytes` past the lowest row never
used and never goes past the rows the restore can fill, so the worker's memory still grows with
its keys. Elsewhere (another OS, an older kernel) it does nothing and the loop faults the rows
in itself.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from worker.state.cache import StateCache

log = logging.getLogger(__name__)

MADV_POPULATE_WRITE = 23  # linux/mman.h
AHEAD_BYTES = 64 << 20
# one call holds the process's memory map for reading: small calls let the loop's and
# librdkafka's allocations (which write it) through
_CHUNK_BYTES = 512 << 10
_PAGE = 4096

Madvise = Callable[[int, int, int], int]


def zeroed_rows(rows: int, width: int) -> np.ndarray:
    """Float32 rows of zeros on a mapping of their own: untouched until written, in small pages."""
    length = max(1, rows * width * 4)  # zero-filled, page-aligned
    if hasattr(mmap, "MAP_PRIVATE"):  # POSIX, where an anonymous mapping is shared (shmem) by default
        mapping = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:
        mapping = mmap.mmap(-1, length)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux; also where transparent huge pages are "always"
        mapping.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(mapping, dtype=np.float32, count=rows * width).reshape(rows, width)


def _madvise() -> Madvise | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


class Prefault:
    """Runs from the start of a restore of `records` records until `stop`."""

    def __init__(self, cache: StateCache, records: int, ahead_bytes: int = AHEAD_BYTES) -> None:
        self._cache = cache
        self._states = cache.states  # held: the thread touches its memory
        self._row_bytes = cache.states.strides[0]
        self._end_row = min(cache.capacity, cache.fresh_row + records)
        self._ahead = ahead_bytes
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        madvise = _madvise()
        if madvise is not None and self._end_row > cache.fresh_row:
            self._thread = threading.Thread(target=self._run, args=(madvise,), name="state-prefault", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, madvise: Madvise) -> None:
        base = self._states.ctypes.data
        end = base + self._end_row * self._row_bytes
        done = base - base % _PAGE
        while not self._stopped.is_set() and done < end:
            fresh = base + self._cache.fresh_row * self._row_bytes
            done = max(done, fresh - fresh % _PAGE)  # the loop got there first
            target = min(end, fresh + self._ahead)
            if done >= target:  # far enough ahead: wait for the restore
                self._stopped.wait(0.002)
                continue
            length = min(-(-(target - done) // _PAGE) * _PAGE, _CHUNK_BYTES)  # whole pages
            if madvise(done, length, MADV_POPULATE_WRITE) != 0:  # EINVAL before Linux 5.14
                log.debug("cache prefault stopped: madvise errno=%d", ctypes.get_errno())
                return
            done += length
