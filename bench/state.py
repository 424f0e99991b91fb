"""Part 5: restore of a large state topic, resident memory per key, and cold misses.

The state records are written directly (the worker's own encoding and model fingerprint,
`src` offset -1 so that no event counts as applied), co-partitioned with the input by key.
Three workers, one after the other:
- idle: the same `--cache-keys` on an empty input, for the RSS of a worker holding no key;
- restore: starts on the state topic's input and restores every record into an LRU large
  enough for all of them; start to `/readyz` 200, the restore counters, then the RSS;
- cold: a small LRU, one event for each of many keys spread over the whole state topic, so
  nearly every lookup is a miss read back from the state topic by offset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from bench.kafka_io import BenchKafka, partition_of
from bench.process import Launcher, Reading, WorkerProcess
from worker.codec import encode_event, encode_state
from worker.synthetic import Produced, key_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateResult:
    keys: int
    partitions: int
    raw_bytes_per_key: int
    written: Produced
    start_to_ready_s: float
    restore_records: int
    restore_seconds: float  # the worker's own restore time (lstm_worker_restore_seconds_sum)
    resident_keys: int
    idle_rss: int
    full_rss: int
    cold_cache_keys: int
    cold_events: int
    cold_misses: int
    cold_lookups: int
    cold_seconds: float

    @property
    def restore_per_s(self) -> float:
        return self.restore_records / self.restore_seconds if self.restore_seconds > 0 else float("nan")

    @property
    def bytes_per_key(self) -> float:
        return (self.full_rss - self.idle_rss) / max(self.resident_keys, 1)

    @property
    def vs_raw(self) -> float:
        return self.bytes_per_key / self.raw_bytes_per_key

    @property
    def misses_per_s(self) -> float:
        return self.cold_misses / self.cold_seconds if self.cold_seconds > 0 else float("nan")


def state_records(keys: int, sizes: list[int], fingerprint: str, partitions: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, state record) of keys 0..keys-1: one of 64 random states of the model's layout each.

    A record depends only on its state and partition here, so each of those pairs is encoded once.
    """
    pool = np.random.default_rng(3).standard_normal((64, sum(sizes))).astype(np.float32) * 0.1
    now = int(time.time() * 1000)
    encoded: dict[tuple[int, int], bytes] = {}
    for k in range(keys):
        key = key_name(k)
        which = (k % 64, partition_of(key, partitions))
        value = encoded.get(which)
        if value is None:
            value = encoded[which] = encode_state(
                pool[which[0]], sizes, model=fingerprint, step=1, partition=which[1], offset=-1, ts=now
            )
        yield key, value


def _settled(worker: WorkerProcess, keys: int, timeout: float = 30.0) -> Reading:
    """A reading once the cache gauge (set at commit points) shows `keys` resident, and a moment after."""
    deadline = time.monotonic() + timeout
    reading = worker.read()
    while reading.value("lstm_worker_cache_keys") < keys and time.monotonic() < deadline:
        time.sleep(0.5)
        reading = worker.read()
    time.sleep(1.0)
    return worker.read()


def _ready_timeout(keys: int) -> float:
    return 180.0 + keys / 2000.0  # a restore slower than 2,000 records/s is a failure


def state(
    bench: BenchKafka,
    launcher: Launcher,
    keys: int,
    partitions: int,
    sizes: list[int],
    fingerprint: str,
    cold_cache_keys: int = 10_000,
    cold_events: int = 50_000,
    cold_seconds: float = 45.0,
) -> StateResult:
    topic = bench.create(bench.name("state"), partitions)
    state_topic = bench.create(topic + ".state", partitions, {"cleanup.policy": "compact"})
    cache = str(keys)
    idle_topic = bench.create(bench.name("idle"), partitions)
    idle = launcher.start(
        "state-idle", idle_topic, bench.name("idle-out"), bench.name("idle-group"), "--cache-keys", cache
    )
    try:  # the idle worker starts while the state records are written (its RSS is all it gives)
        started = time.monotonic()
        count = bench.produce_keyed(
            state_topic, state_records(keys, sizes, fingerprint, partitions), partitions, **{"compression.type": "none"}
        )
        written = Produced(count, time.monotonic() - started)
        log.info("state records written=%d records_per_s=%.0f", count, written.per_s)
        idle.wait_ready(180)
        idle_rss = _settled(idle, 0).rss
    finally:
        launcher.stop(idle)
    restorer = launcher.start(
        "state-restore", topic, bench.name("state-out"), bench.name("state-group"), "--cache-keys", cache
    )
    try:
        ready = restorer.wait_ready(_ready_timeout(keys))
        full = _settled(restorer, keys)
    finally:
        launcher.stop(restorer)
    cold = _cold(bench, launcher, state_topic, keys, partitions, cold_cache_keys, min(keys, cold_events), cold_seconds)
    return StateResult(
        keys=keys,
        partitions=partitions,
        raw_bytes_per_key=4 * sum(sizes),
        written=written,
        start_to_ready_s=ready.at - restorer.started,
        restore_records=int(ready.value("lstm_worker_restore_records_total")),
        restore_seconds=ready.value("lstm_worker_restore_seconds_sum"),
        resident_keys=int(full.value("lstm_worker_cache_keys")),
        idle_rss=idle_rss,
        full_rss=full.rss,
        cold_cache_keys=cold_cache_keys,
        cold_events=cold[0],
        cold_misses=cold[1],
        cold_lookups=cold[2],
        cold_seconds=cold[3],
    )


def _cold(
    bench: BenchKafka,
    launcher: Launcher,
    state_topic: str,
    keys: int,
    partitions: int,
    cache_keys: int,
    events: int,
    seconds: float,
) -> tuple[int, int, int, float]:
    """(events, misses, lookups, seconds) of a worker with a small LRU on keys spread over the state."""
    rng = np.random.default_rng(11)
    chosen = rng.choice(keys, size=events, replace=False)
    xs = rng.standard_normal((events, 4)).astype(np.float32)
    topic = bench.create(bench.name("cold"), partitions)
    bench.produce_keyed(topic, ((key_name(int(k)), encode_event(xs[i])) for i, k in enumerate(chosen)), partitions)
    worker = launcher.start(
        "state-cold",
        topic,
        bench.name("cold-out"),
        bench.name("cold-group"),
        *("--state-topic", state_topic, "--cache-keys", str(cache_keys)),
    )
    try:
        first = worker.wait_ready(_ready_timeout(keys))
        last = first
        while last.predicted < events and last.at - first.at < seconds:
            time.sleep(0.2)
            last = worker.read()
    finally:
        launcher.stop(worker)

    def lookups(r: Reading, result: str) -> float:
        return r.value("lstm_worker_cache_lookups_total", result=result)

    misses = int(lookups(last, "miss") - lookups(first, "miss"))
    total = sum(int(lookups(last, k) - lookups(first, k)) for k in ("hit", "miss", "new"))
    return last.predicted, misses, total, last.at - first.at
