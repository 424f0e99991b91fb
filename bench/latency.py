"""Part 4: latency under a fixed load, a share of the drain rate measured just before.

The worker is ready before the first event is sent. The producer paces itself to the rate,
stamps each event's `ts` when it hands it to the client, and the latency of an event is its
prediction's log-append time minus that `ts`: producer linger and queue, broker, the
worker's fetch, its round, the step and the output producer's linger.
The first seconds at the rate warm the worker up (its first rounds of each shape, the fetch
sessions); they are reported apart and not counted in the quantiles.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import msgpack
import numpy as np

from bench.kafka_io import BenchKafka, FastProducer, partition_of
from bench.peer_run import PeerLauncher
from bench.process import BehindError, Launcher
from bench.scrape import machine_ticks
from bench.stats import events_per_s, percentiles
from worker.config import KafkaConfig
from worker.synthetic import key_name

log = logging.getLogger(__name__)
# librdkafka's default, as a user's producer has it: a shorter linger costs the broker, which
# shares the cores with the worker under test, more CPU per event.
PRODUCER_LINGER_MS = 5
# The second latency run's share of the drain rate (the first is the target's, bench/targets.py):
# the load generator shares the cores, and what a worker serves live when it keeps up is shown too.
LOW_LOAD_SHARE = 0.25
# A server keeps up with a rate when it serves it at this share of the rate sent, having caught
# up within `catch_up_s` of the producer's end: below, its latency only measures its backlog.
SUSTAINED_SHARE = 0.95


@dataclass(frozen=True)
class LatencyResult:
    target_per_s: float
    seconds: float  # producing, warm-up included
    sent: int
    predictions: int
    distinct: int
    latency_ms: np.ndarray  # one per prediction of an event after the warm-up
    warmup_s: float = 0.0
    warmup_latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    served_per_s: float = float("nan")  # predictions, first to last: below the offered rate when behind
    steal_share: float = float("nan")  # of the machine's CPU time while producing, taken by the hypervisor
    generator_nice: int = 0  # the load generator's threads' nice value, as read back
    caught_up: bool = True  # served every event within the run's catch-up time, when it had one

    @property
    def achieved_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else float("nan")

    @property
    def sustained(self) -> bool:
        """It kept up with the rate: else its latency is no figure of a rate it sustains."""
        return self.caught_up and self.served_per_s >= SUSTAINED_SHARE * self.achieved_per_s

    @property
    def quantiles(self) -> dict[float, float]:
        return percentiles(self.latency_ms)

    @property
    def warmup_quantiles(self) -> dict[float, float]:
        return percentiles(self.warmup_latency_ms)


def event_encoder() -> Callable[[bytes, int], bytes]:
    """`encode_event`'s bytes from x already as raw float32, by one reused Packer: less of the CPU
    the load generator takes from the worker under test."""
    pack = msgpack.Packer(use_bin_type=True).pack
    return lambda x, ts: pack({"x": x, "ts": ts})


def paced_send(
    producer: FastProducer, topic: str, keys: int, partitions: int, rate: float, seconds: float, seed: int = 7
) -> tuple[int, float]:
    """Events at `rate` per second for `seconds`, keys drawn at random; returns (sent, seconds).

    The ts is read every 16 events, when the pace is checked, so it may be up to a millisecond
    early: latency overstated, never understated."""
    rng = np.random.default_rng(seed)
    names = [key_name(k) for k in range(keys)]
    where = [partition_of(k, partitions) for k in names]
    encode = event_encoder()
    chunk, ts = 4096, 0
    sent, started, done = 0, time.monotonic(), False
    while not done:
        picks = rng.integers(0, keys, chunk).tolist()
        xs = rng.standard_normal((chunk, 4)).astype(np.float32)
        width, raw = 4 * xs.shape[1], xs.tobytes()
        for j in range(chunk):
            if j % 16 == 0:
                elapsed = time.monotonic() - started
                if elapsed >= seconds:
                    done = True
                    break
                if sent / rate > elapsed:
                    time.sleep(sent / rate - elapsed)
                producer.poll()
                ts = int(time.time() * 1000)
            k = picks[j]
            producer.send(topic, names[k], encode(raw[j * width : (j + 1) * width], ts), where[k])
            sent += 1
    elapsed = time.monotonic() - started
    producer.flush()
    return sent, elapsed


def lower_priority(nice: int) -> int:
    """Run the calling thread, and the threads it starts, at `nice` (never below its own: only
    a privileged process may raise a priority); returns the value set."""
    tid = threading.get_native_id()
    nice = max(nice, os.getpriority(os.PRIO_PROCESS, tid))
    os.setpriority(os.PRIO_PROCESS, tid, nice)  # Linux: per thread, inherited by threads it starts
    return os.getpriority(os.PRIO_PROCESS, tid)


def generate(
    kafka: KafkaConfig, nice: int, topic: str, keys: int, partitions: int, rate: float, seconds: float
) -> tuple[int, float, int]:
    """`paced_send` by a producer of its own on a thread of its own at `nice`, librdkafka's threads
    included: (sent, seconds, the nice value it ran at). The load generator stands for producers
    on other machines; here it shares the cores with the worker under test, and at a lower
    priority the scheduler serves the worker first."""

    def run() -> tuple[int, float, int]:
        ran_at = lower_priority(nice)
        producer = FastProducer(kafka, **{"linger.ms": PRODUCER_LINGER_MS})
        return (*paced_send(producer, topic, keys, partitions, rate, seconds), ran_at)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-generator") as pool:
        return pool.submit(run).result()


def latency(
    bench: BenchKafka,
    launcher: Launcher | PeerLauncher,
    rate: float,
    seconds: float,
    keys: int,
    partitions: int,
    warmup_s: float = 5.0,
    name: str = "latency",
    generator_nice: int = 0,
    catch_up_s: float | None = None,
) -> LatencyResult:
    """`name` tells this run's topics, group and log from another latency run's. The worker or
    the peer (`launcher`'s) serves; with `catch_up_s`, one that has not served every event that
    long after the producer's end is stopped and the result says so (not `sustained`)."""
    topic = bench.create(bench.name(name), partitions)
    output = bench.create_output(bench.name(f"{name}-out"), partitions)
    served = launcher.start(name, topic, output, bench.name(f"{name}-group"))
    caught_up = True
    try:
        served.wait_ready(180)
        first_ms = int(time.time() * 1000)
        before = machine_ticks()
        sent, produced_s, ran_at = generate(
            bench.kafka, generator_nice, topic, keys, partitions, rate, warmup_s + seconds
        )
        _, steal = machine_ticks().shares_since(before)
        try:
            served.wait_served(sent, stall_s=60, deadline_s=catch_up_s)
        except BehindError as exc:
            log.warning("latency %s: not caught up within %.0f s: %s", name, catch_up_s, exc)
            caught_up = False
    finally:
        launcher.stop(served)  # type: ignore[arg-type]
    predictions = bench.read_predictions(output, partitions, sent if caught_up else 0)
    all_ms = predictions.latency_ms()
    warm = predictions.event_ts < first_ms + warmup_s * 1000
    result = LatencyResult(
        rate,
        produced_s,
        sent,
        predictions.count,
        predictions.distinct,
        all_ms[~warm],
        warmup_s,
        all_ms[warm],
        events_per_s(predictions.distinct, predictions.first_ms, predictions.last_ms),
        steal,
        ran_at,
        caught_up,
    )
    q = result.quantiles
    log.info(
        "latency rate=%.0f achieved=%.0f p50=%.1f p99=%.1f p99.9=%.1f ms",
        rate,
        result.achieved_per_s,
        q[50.0],
        q[99.0],
        q[99.9],
    )
    return result
