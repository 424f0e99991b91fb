"""`lstm-worker verify`: every event's prediction against the original model on its full history.

Reads the whole input topic, splits each key's events into sequences (a `reset` event
opens one, an `end` event closes one), recomputes them offline, then reads predictions
until each event has one (or nothing new came for `timeout_s`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from worker.codec import CodecError, Event
from worker.config import KafkaConfig
from worker.errors import TopicError
from worker.formats import PredictionDecoding, event_decoder, prediction_decoder
from worker.kafka.output import position
from worker.kafka.reader import TopicReader
from worker.kafka.topics import partition_count
from worker.model.loader import load_model
from worker.model.offline import full_history_predictions

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from worker.options import Format
    from worker.plot import PredictionTrace

Src = tuple[int, int]


@dataclass
class VerifyReport:
    events: int = 0
    invalid_events: int = 0
    keys: int = 0
    predictions: int = 0
    missing: int = 0
    duplicates: int = 0
    wrong: int = 0
    unexpected: int = 0
    max_abs_diff: float = 0.0
    seconds: float = 0.0
    throughput_eps: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_p999_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.events > 0 and self.missing == 0 and self.wrong == 0 and self.unexpected == 0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        verdict = "OK: every event has a prediction equal to the full-history model" if self.ok else "FAILED"
        return (
            f"verify: events={self.events} keys={self.keys} invalid_events={self.invalid_events} "
            f"predictions={self.predictions} missing={self.missing} duplicates={self.duplicates} "
            f"wrong={self.wrong} unexpected={self.unexpected} max_abs_diff={self.max_abs_diff:.3g} "
            f"seconds={self.seconds:.1f}\n"
            f"throughput: {self.throughput_eps:,.0f} predictions/s (first to last prediction); latency "
            f"(event ts to prediction) p50={self.latency_p50_ms:.1f} ms p99={self.latency_p99_ms:.1f} ms "
            f"p99.9={self.latency_p999_ms:.1f} ms\n{verdict}"
        )


def split_sequences(events: list[Event]) -> list[list[Event]]:
    """A key's events in order -> its sequences: `reset` opens one, `end` closes one."""
    sequences: list[list[Event]] = []
    current: list[Event] = []
    for event in events:
        if event.reset and current:
            sequences.append(current)
            current = []
        current.append(event)
        if event.end:
            sequences.append(current)
            current = []
    if current:
        sequences.append(current)
    return sequences


def expected_predictions(
    model: object, events: list[tuple[bytes, Event]], report: VerifyReport
) -> dict[Src, np.ndarray]:
    by_key: dict[tuple[int, bytes], list[Event]] = {}
    for key, event in events:
        by_key.setdefault((event.partition, key), []).append(event)
    report.keys = len(by_key)
    sequences = [seq for evs in by_key.values() for seq in split_sequences(evs)]
    outputs = full_history_predictions(model, [np.stack([e.x for e in seq]) for seq in sequences])
    return {(e.partition, e.offset): y[i] for seq, y in zip(sequences, outputs, strict=True) for i, e in enumerate(seq)}


def _read_events(
    kafka: KafkaConfig,
    topic: str,
    features: int,
    fmt: Format,
    registry: SchemaRegistryClient | None,
    report: VerifyReport,
) -> list[tuple[bytes, Event]]:
    admin = AdminClient(kafka.admin())
    partitions = partition_count(admin, topic)
    if partitions is None:
        raise TopicError(f"input topic {topic!r} does not exist")
    reader = TopicReader(kafka.consumer("lstm-worker-verify"), topic)
    try:
        records = list(reader.read_partitions(list(range(partitions))))
    finally:
        reader.close()
    # the event ts matters not here: the worker's predictions carry the one it used
    decoded = event_decoder(fmt, features, 1 << 30, registry).decode(
        [value for _, _, _, value in records], lambda indexes: [0] * len(indexes)
    )
    events = []
    for i, (p, offset, key, _) in enumerate(records):
        if key is None or not decoded.ok[i]:
            report.invalid_events += 1
            continue
        event = Event(p, offset, decoded.x[i], int(decoded.ts[i]), bool(decoded.reset[i]), bool(decoded.end[i]))
        events.append((key, event))
    report.events = len(events)
    return events


def _check_predictions(
    kafka: KafkaConfig,
    topic: str,
    expected: dict[Src, np.ndarray],
    tolerance: float,
    timeout_s: float,
    decode: PredictionDecoding,
    report: VerifyReport,
    trace: PredictionTrace | None = None,
) -> None:
    admin = AdminClient(kafka.admin())
    partitions = partition_count(admin, topic) or 0
    consumer = Consumer(kafka.consumer("lstm-worker-verify", **{"enable.partition.eof": True}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen: set[Src] = set()
    at_end: set[int] = set()
    timing: list[tuple[int, int]] = []  # (prediction log time, event ts)
    last_progress = time.monotonic()
    try:
        while time.monotonic() - last_progress < timeout_s:
            if len(seen) == len(expected) and len(at_end) == partitions:
                break
            for msg in consumer.consume(num_messages=5000, timeout=0.5):
                p, _ = position(msg)
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(p)
                    continue
                at_end.discard(p)
                last_progress = time.monotonic()
                ts = _score(decode, msg.value(), expected, seen, tolerance, report, trace)
                if ts is not None:
                    timing.append((msg.timestamp()[1], ts))
    finally:
        consumer.close()
    report.missing = len(expected) - len(seen)
    _timing(timing, report)


def _timing(timing: list[tuple[int, int]], report: VerifyReport) -> None:
    if len(timing) < 2:
        return
    logged = np.array([t for t, _ in timing], dtype=np.int64)
    latency = logged - np.array([ts for _, ts in timing], dtype=np.int64)
    report.latency_p50_ms, report.latency_p99_ms, report.latency_p999_ms = (
        float(v) for v in np.percentile(latency, [50, 99, 99.9])
    )
    span_s = (logged.max() - logged.min()) / 1000.0
    report.throughput_eps = len(timing) / span_s if span_s > 0 else 0.0


def _score(
    decode: PredictionDecoding,
    value: bytes | None,
    expected: dict[Src, np.ndarray],
    seen: set[Src],
    tolerance: float,
    report: VerifyReport,
    trace: PredictionTrace | None = None,
) -> int | None:
    """Count one prediction; returns its event ts when it is one of the expected."""
    report.predictions += 1
    try:
        pred = decode(value)
    except CodecError:
        report.unexpected += 1
        return None
    src = (pred.partition, pred.offset)
    want = expected.get(src)
    if want is None:
        report.unexpected += 1
        return None
    if src in seen:
        report.duplicates += 1
    seen.add(src)
    diff = float(np.max(np.abs(np.asarray(pred.y, dtype=np.float64) - want)))
    report.max_abs_diff = max(report.max_abs_diff, diff)
    if not diff <= tolerance:
        report.wrong += 1
    if trace is not None:
        trace.observe(src, pred.y)
    return pred.ts


def verify(
    kafka: KafkaConfig,
    *,
    model_path: str,
    input_topic: str,
    output_topic: str,
    tolerance: float = 1e-5,
    timeout_s: float = 60.0,
    input_format: Format = "msgpack",
    output_format: Format | None = None,
    registry: SchemaRegistryClient | None = None,
    trace: PredictionTrace | None = None,
) -> VerifyReport:
    """`output_format` None: the input's. `trace`, when given, records a few keys' offline and
    streaming predictions (`worker.plot`)."""
    started = time.monotonic()
    report = VerifyReport()
    model = load_model(model_path)
    features = int(model.input_shape[-1])
    events = _read_events(kafka, input_topic, features, input_format, registry, report)
    expected = expected_predictions(model, events, report)
    if trace is not None:
        trace.choose(events, expected)
    decode = prediction_decoder(output_format or input_format, output_topic, registry)
    _check_predictions(kafka, output_topic, expected, tolerance, timeout_s, decode, report, trace)
    report.seconds = time.monotonic() - started
    return report
