"""Parts 3 and 6: workers drain a pre-loaded input topic; one worker, then two in one group.

Each drain has a fresh group and fresh output, state and dead-letter topics, so the second
drain of the same input starts from nothing too. The rate is taken from the predictions'
log-append times (first to last); the round sizes, the loop's time per phase and the CPU
from the workers' metrics and /proc between each one's readiness and the end.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from bench.kafka_io import BenchError, BenchKafka
from bench.process import Launcher, Reading, wait_caught_up, wait_predicted
from bench.scrape import machine_ticks
from bench.stats import events_per_s, phase_deltas
from worker.synthetic import Produced

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrainInput:
    topic: str
    events: int
    keys: int
    partitions: int
    produced: Produced


@dataclass(frozen=True)
class DrainResult:
    workers: int
    events: int
    keys: int
    partitions: int
    predictions: int  # records in the output topic
    distinct: int  # events with at least one prediction
    events_per_s: float  # distinct / (last - first log-append time)
    seconds: float  # first to last prediction
    wall_s: float  # from the first worker's readiness until all were predicted (1 Hz polls)
    start_to_ready_s: float
    rounds: int
    round_keys: float  # mean keys per round
    round_steps: float  # mean of the longest key slice per round
    cpu_cores: float  # the workers' CPU seconds per wall second, summed
    machine_cores: float  # every process on the machine (broker, benchmark, others)
    steal_cores: float  # the hypervisor's steal meanwhile, in cores the VM did not get
    busy_s: dict[str, float] = field(default_factory=dict)  # loop seconds per phase, summed
    per_worker: list[int] = field(default_factory=list)  # predictions of each worker

    @property
    def duplicates(self) -> int:
        return self.predictions - self.distinct

    @property
    def missing(self) -> int:
        return self.events - self.distinct


def preload(bench: BenchKafka, events: int, keys: int, partitions: int) -> DrainInput:
    topic = bench.create(bench.name("drain"), partitions)
    produced = bench.preload_events(topic, events, keys, partitions)
    log.info("pre-loaded events=%d keys=%d topic=%s events_per_s=%.0f", events, keys, topic, produced.per_s)
    return DrainInput(topic, events, keys, partitions, produced)


def _sum(readings: list[Reading], name: str) -> float:
    return sum(r.value(name) for r in readings)


def drain(bench: BenchKafka, launcher: Launcher, data: DrainInput, workers: int = 1) -> DrainResult:
    """`workers` worker processes in a fresh group drain `data` from the beginning."""
    tag = f"drain{workers}"
    output = bench.create_output(bench.name(f"{tag}-out"), data.partitions)
    state, dlq, group = bench.name(f"{tag}.state"), bench.name(f"{tag}.dlq"), bench.name(tag)
    started = time.monotonic()
    procs = [
        launcher.start(f"{tag}-{i}", data.topic, output, group, "--state-topic", state, "--dlq-topic", dlq)
        for i in range(workers)
    ]
    ready: dict[int, Reading] = {}
    try:
        while len(ready) < workers:  # each one's baseline at its own readiness
            for i, proc in enumerate(procs):
                if i not in ready and proc.is_ready():
                    ready[i] = proc.read()
            if time.monotonic() - started > 180:
                raise BenchError(f"{workers} worker(s) not ready after 180 s")
            time.sleep(0.05)
        first_ready = min(r.at for r in ready.values())
        cpu1 = machine_ticks()
        final = wait_predicted(procs, data.events)
        cpu2 = machine_ticks()
        wait_caught_up(procs)
    finally:
        launcher.stop(*procs)
    done = max(r.at for r in final)
    predictions = bench.read_predictions(output, data.partitions, data.events)
    busy: dict[str, float] = {}
    for i, reading in enumerate(final):
        for phase, seconds in phase_deltas(ready[i].busy, reading.busy).items():
            busy[phase] = busy.get(phase, 0.0) + seconds
    rounds = int(_sum(final, "lstm_worker_round_keys_count"))
    cpu = sum((final[i].cpu_s - ready[i].cpu_s) / max(final[i].at - ready[i].at, 1e-9) for i in range(workers))
    machine_share, steal_share = cpu2.shares_since(cpu1)
    result = DrainResult(
        workers=workers,
        events=data.events,
        keys=data.keys,
        partitions=data.partitions,
        predictions=predictions.count,
        distinct=predictions.distinct,
        events_per_s=events_per_s(predictions.distinct, predictions.first_ms, predictions.last_ms),
        seconds=(predictions.last_ms - predictions.first_ms) / 1000.0,
        wall_s=done - first_ready,
        start_to_ready_s=first_ready - started,
        rounds=rounds,
        round_keys=_sum(final, "lstm_worker_round_keys_sum") / max(rounds, 1),
        round_steps=_sum(final, "lstm_worker_round_steps_sum") / max(rounds, 1),
        cpu_cores=cpu,
        machine_cores=machine_share * (os.cpu_count() or 1),
        steal_cores=steal_share * (os.cpu_count() or 1),
        busy_s=busy,
        per_worker=[r.predicted for r in final],
    )
    log.info(
        "drained workers=%d events=%d events_per_s=%.0f round_keys=%.1f cpu_cores=%.2f",
        workers,
        result.distinct,
        result.events_per_s,
        result.round_keys,
        result.cpu_cores,
    )
    return result
