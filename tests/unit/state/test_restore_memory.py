"""The restore's memory (worker/state/memory.py): the cache's rows are private memory in small
pages; the prefault faults them in ahead of the restore, never past the rows the restore can
fill, and changes nothing they hold.

Residency is read with mincore(2), so these run on Linux only.
"""

import ctypes
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from worker.state.cache import StateCache
from worker.state.memory import Prefault

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise/mincore are Linux's")

PAGE = 4096
DIM = 1024  # one row per page
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def fresh_cache(capacity: int) -> StateCache:
    """A cache whose rows are memory never touched, seen page by page (row r is page r)."""
    cache = StateCache(capacity=capacity, state_dim=DIM)
    assert cache.states.ctypes.data % PAGE == 0
    assert not resident_rows(cache).any()
    return cache


def huge_pages_on() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def mappings_over(array: np.ndarray) -> list[dict[str, str]]:
    """The /proc/self/smaps fields of each mapping under the array (NumPy's own large arrays
    split theirs: 2 MB pages are asked for their aligned middle only)."""
    low, high = array.ctypes.data, array.ctypes.data + array.nbytes
    found: list[dict[str, str]] = []
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if not head.endswith(":"):  # a mapping's first line: its address range
            start, end = (int(a, 16) for a in head.split("-"))
            fields: dict[str, str] | None = {} if start < high and low < end else None
            if fields is not None:
                found.append(fields)
        elif fields is not None:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return found


@pytest.mark.skipif(not huge_pages_on(), reason="transparent huge pages are off")
def test_the_cache_rows_are_in_small_pages():
    """NumPy asks for 2 MB pages for large arrays; faulting those in cost the benchmark's VM
    five times the CPU of small ones. The rows are the process's own memory, not shared."""
    cache = StateCache(capacity=8192, state_dim=600)  # 19 MB
    cache.states[:] = 1.0
    mappings = mappings_over(cache.states)
    assert [m["THPeligible"] for m in mappings] == ["0"] * len(mappings)
    assert [m["AnonHugePages"] for m in mappings] == ["0 kB"] * len(mappings)
    assert sum(int(m["Anonymous"].split()[0]) for m in mappings) << 10 >= cache.states.nbytes  # private, not shmem


def resident_rows(cache: StateCache) -> np.ndarray:
    """Per row of the cache (one page each), whether its memory is resident (mincore)."""
    vec = ctypes.create_string_buffer(cache.capacity)
    assert LIBC.mincore(cache.states.ctypes.data, cache.states.nbytes, vec) == 0, ctypes.get_errno()
    return (np.frombuffer(vec.raw, dtype=np.uint8) & 1).astype(bool)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_rows_the_restore_can_fill_are_faulted_in_and_no_more():
    cache = fresh_cache(4096)  # 16 MB, untouched
    prefault = Prefault(cache, records=1000, ahead_bytes=64 << 20)
    try:
        wait_for(lambda: resident_rows(cache)[:1000].all())
        time.sleep(0.05)
        assert resident_rows(cache)[1002:].sum() == 0  # 1,000 records fill at most 1,000 rows
    finally:
        prefault.stop()


def test_it_keeps_only_so_far_ahead_of_the_rows_used():
    cache = fresh_cache(4096)
    prefault = Prefault(cache, records=4096, ahead_bytes=200 * PAGE)
    try:
        wait_for(lambda: resident_rows(cache)[:200].all())
        time.sleep(0.05)
        assert resident_rows(cache)[202:].sum() == 0
        cache.place_many([(0, str(k).encode()) for k in range(1000)])  # the restore took 1,000 rows
        wait_for(lambda: resident_rows(cache)[1000:1200].all())
        time.sleep(0.05)
        assert resident_rows(cache)[1202:].sum() == 0
    finally:
        prefault.stop()


def test_what_the_rows_hold_is_unchanged():
    cache = fresh_cache(2048)
    cache.states[:10] = 7.0
    row = cache.place((0, b"k"))
    prefault = Prefault(cache, records=2048)
    wait_for(lambda: resident_rows(cache).all())
    prefault.stop()
    assert row == 0
    np.testing.assert_array_equal(cache.states[:10], 7.0)
    assert not cache.states[10:].any()
