"""glibc's heap (worker/heap.py): memory a round or a commit point freed is kept for the next
one rather than faulted in again; a restore's free memory is given back; an operator's own
malloc settings win. Each case runs in a fresh process, whose heap nothing else has shaped."""

import platform
import subprocess
import sys

import pytest

from worker.heap import keep_freed_memory

# musl has a mallopt too, which does nothing
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's")

PRELUDE = """
import ctypes, resource, sys
from worker.heap import keep_freed_memory, trim_heap
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
"""

# a commit point's state records: 10,000 of 2.4 KB written and freed, twice; the faults of the second
COMMIT_POINTS = (
    PRELUDE
    + """
if sys.argv[1] == "kept":
    assert keep_freed_memory()
libc.free(libc.malloc(1 << 20))  # a round's array: glibc's moving thresholds now 1 and 2 MB
def commit_point():
    blocks = [libc.malloc(2400) for _ in range(10_000)]
    for b in blocks:
        ctypes.memset(b, 1, 2400)
    for b in blocks:
        libc.free(b)
commit_point()
before = faults()
commit_point()
print(faults() - before)
"""
)

FREED_HEAP = (
    PRELUDE
    + """
blocks = [libc.malloc(64 << 10) for _ in range(1024)]  # 64 MB in the heap (below mmap's threshold)
for b in blocks:
    ctypes.memset(b, 1, 64 << 10)
fence = libc.malloc(64 << 10)  # above them: the heap's top cannot shrink
for b in blocks:
    libc.free(b)
kept = rss()
assert trim_heap()
print(kept - rss())
"""
)


def run(script: str, *args: str) -> int:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True).stdout
    return int(out)


def test_a_commit_points_freed_memory_is_kept_for_the_next():
    assert run(COMMIT_POINTS, "kept") < 600  # of the 24 MB's ~5,900 pages
    assert run(COMMIT_POINTS, "default") > 4000  # glibc gave the 24 MB back, and faulted it in again


def test_the_heaps_free_memory_is_given_back():
    assert run(FREED_HEAP) > 48 << 20  # of the 64 MB freed but kept


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "1"),
        ("MALLOC_MMAP_THRESHOLD_", "1"),
        ("GLIBC_TUNABLES", "glibc.cpu.x86_shstk=0:glibc.malloc.trim_threshold=1"),
    ],
)
def test_the_operators_malloc_settings_win(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert not keep_freed_memory()
