"""Parts 3 and 6: workers drain a pre-loaded input topic; one worker, then the same events as
JSON and as Avro and the msgpack topic once more (one worker each), then two in one group.

Each drain has a fresh group and fresh output, state and dead-letter topics, so a later
drain of the same input starts from nothing too. The rate is taken from the predictions'
log-append times (first to last); the round sizes, the loop's time per phase and the CPU
from the workers' metrics and /proc between each one's readiness and the end.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.check import Expected, ValueCheck, check_values
from bench.kafka_io import BenchError, BenchKafka
from bench.process import Launcher, Reading, wait_caught_up, wait_predicted
from bench.scrape import machine_ticks
from bench.stats import events_per_s, phase_deltas
from worker.config import RegistryConfig
from worker.formats import PredictionDecoding, event_encoder, prediction_decoder
from worker.options import Format
from worker.synthetic import Produced

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

log = logging.getLogger(__name__)
# Part 3's drains after its first (msgpack) one, in order: the msgpack topic again last, so that
# JSON and Avro are each compared with the mean of a msgpack drain before and one after them.
FORMAT_DRAINS: tuple[Format, ...] = ("json", "avro", "msgpack")
NO_REGISTRY = "no `--schema-registry-url` was given (`make bench` starts a registry and passes it)"


def planned_formats(registry_url: str | None) -> tuple[list[Format], dict[str, str]]:
    """The format drains of this run in order, and those it skips with why: Avro needs a registry."""
    skipped: dict[str, str] = {} if registry_url else {"avro": NO_REGISTRY}
    return [fmt for fmt in FORMAT_DRAINS if fmt not in skipped], skipped


@dataclass(frozen=True)
class Registry:
    """The Schema Registry of the Avro drain: its URL for the worker, a client for the benchmark's serdes."""

    url: str
    client: SchemaRegistryClient

    @classmethod
    def connect(cls, url: str) -> Registry:
        from worker.formats.registry import connect_registry

        return cls(url, connect_registry(RegistryConfig(url)))


@dataclass(frozen=True)
class DrainInput:
    topic: str
    events: int
    keys: int
    partitions: int
    produced: Produced
    format: Format = "msgpack"
    registry: Registry | None = None  # Avro's

    def worker_args(self) -> list[str]:
        """The worker's options of this format, outputs in it too (msgpack: the defaults, none)."""
        if self.format == "msgpack":
            return []
        args = ["--input-format", self.format, "--output-format", self.format]
        return args + (["--schema-registry-url", self.registry.url] if self.registry else [])

    def prediction_decoder(self, output: str) -> PredictionDecoding:
        return prediction_decoder(self.format, output, self.registry.client if self.registry else None)


class Counted:
    """A drain's prediction counts: its dataclass gives events, predictions (records in the output
    topic) and distinct (events with at least one prediction)."""

    events: int
    predictions: int
    distinct: int

    @property
    def duplicates(self) -> int:
        return self.predictions - self.distinct

    @property
    def missing(self) -> int:
        return self.events - self.distinct


@dataclass(frozen=True)
class DrainResult(Counted):
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
    format: Format = "msgpack"  # of the input and the output topic
    values: ValueCheck | None = None  # the sampled keys' predictions against their full histories


def preload(
    bench: BenchKafka,
    events: int,
    keys: int,
    partitions: int,
    fmt: Format = "msgpack",
    registry: Registry | None = None,
) -> DrainInput:
    """The drain's events in `fmt` into a fresh topic: the same events whatever the format."""
    topic = bench.create(bench.name("drain" if fmt == "msgpack" else f"drain-{fmt}"), partitions)
    encode = event_encoder(fmt, topic, registry.client if registry else None)
    produced = bench.preload_events(topic, events, keys, partitions, encode)
    log.info(
        "pre-loaded events=%d keys=%d format=%s topic=%s events_per_s=%.0f", events, keys, fmt, topic, produced.per_s
    )
    return DrainInput(topic, events, keys, partitions, produced, fmt, registry)


def _sum(readings: list[Reading], name: str) -> float:
    return sum(r.value(name) for r in readings)


def drain(
    bench: BenchKafka,
    launcher: Launcher,
    data: DrainInput,
    workers: int = 1,
    tag: str | None = None,
    expected: Expected | None = None,
) -> DrainResult:
    """`workers` worker processes in a fresh group drain `data` from the beginning; `tag` names the
    drain's topics and group (default `drain<workers>`), one per drain of the run; the predictions'
    values checked against `expected` when given."""
    tag = tag or f"drain{workers}"
    output = bench.create_output(bench.name(f"{tag}-out"), data.partitions)
    state, dlq, group = bench.name(f"{tag}.state"), bench.name(f"{tag}.dlq"), bench.name(tag)
    started = time.monotonic()
    procs = [
        launcher.start(
            f"{tag}-{i}", data.topic, output, group, "--state-topic", state, "--dlq-topic", dlq, *data.worker_args()
        )
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
    predictions = bench.read_predictions(output, data.partitions, data.events, decode=data.prediction_decoder(output))
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
        format=data.format,
        values=None if expected is None else check_values(expected, predictions),
    )
    log.info(
        "drained workers=%d format=%s events=%d events_per_s=%.0f round_keys=%.1f cpu_cores=%.2f",
        workers,
        data.format,
        result.distinct,
        result.events_per_s,
        result.round_keys,
        result.cpu_cores,
    )
    return result
