"""The benchmark's own Kafka I/O: its topics, fast pre-encoded producing, reading predictions back.

Every topic of a run is named `bench-<run>-...` and deleted at the end. Output topics are created
beforehand with `message.timestamp.type=LogAppendTime`, so each prediction carries the time the
broker appended it: rates and latencies come from those, never from a poll loop's clock.
Partitions are chosen by the benchmark (CRC32 of the key, as librdkafka's default partitioner),
so that events and the state records written for the same keys are co-partitioned.
"""

from __future__ import annotations

import logging
import time
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from worker.codec import CodecError, decode_prediction
from worker.config import KafkaConfig
from worker.errors import WorkerError
from worker.formats import EventEncoding, PredictionDecoding, event_encoder
from worker.kafka.output import position
from worker.kafka.topics import create_topic
from worker.synthetic import Produced, interleaving, key_name

log = logging.getLogger(__name__)


class BenchError(WorkerError):
    """A benchmark step failed (a worker died, a wait timed out, a record was lost)."""


def partition_of(key: bytes, partitions: int) -> int:
    return zlib.crc32(key) % partitions


def event_values(events: int, keys: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Key index of each event in send order and its x [events, 4]: regenerated from `seed`, so a
    drain's predictions can be checked without reading the input back."""
    order = interleaving(events, keys, seed)
    return order, np.random.default_rng(seed + 1).standard_normal((events, 4)).astype(np.float32)


def encoded_events(events: int, keys: int, encode: EventEncoding, seed: int = 0) -> tuple[list[int], list[bytes]]:
    """Key index of each event in send order and its value: the same events (keys, x, order) for the
    same `seed` whatever format `encode` writes; no ts, so the worker takes the record's."""
    order, x = event_values(events, keys, seed)
    return order.tolist(), [encode(x[i], None, False, False) for i in range(events)]


class FastProducer:
    """Large batches, errors latched and raised at `flush`; a full queue is waited out."""

    def __init__(self, kafka: KafkaConfig, **extra: Any) -> None:
        self.errors: list[str] = []
        settings = {
            "linger.ms": 20,
            "batch.size": 1_000_000,
            # a Python callback per delivered record costs the load generator CPU the worker
            # under test shares: only failures are reported (and raised at flush)
            "delivery.report.only.error": True,
            **extra,
            "on_delivery": self._delivered,
        }
        self._producer = Producer(kafka.producer(**settings))

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def send(self, topic: str, key: bytes, value: bytes, partition: int) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, partition)
                return
            except BufferError:
                self._producer.poll(0.05)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout: float = 120.0) -> None:
        left = self._producer.flush(timeout)
        if left or self.errors:
            raise BenchError(f"producing failed: {left} records undelivered, errors: {self.errors[:3]}")


class BenchKafka:
    """The cluster as the benchmark uses it; remembers every topic it names, to delete them."""

    def __init__(self, kafka: KafkaConfig, run: str) -> None:
        self.kafka = kafka
        self.run = run
        self.admin = AdminClient(kafka.admin())
        self.names: list[str] = []
        self._created: set[str] = set()

    def name(self, suffix: str) -> str:
        topic = f"bench-{self.run}-{suffix}"
        self.names.append(topic)
        return topic

    def create(self, topic: str, partitions: int, config: dict[str, str] | None = None) -> str:
        """A fresh topic: one created before in this run would mix two parts' records."""
        if topic in self._created:
            raise BenchError(f"topic {topic!r} was created before in this run: give the part its own name")
        create_topic(self.admin, topic, partitions, config)
        self._created.add(topic)
        return topic

    def create_output(self, topic: str, partitions: int) -> str:
        return self.create(topic, partitions, {"message.timestamp.type": "LogAppendTime"})

    def delete_all(self) -> None:
        """The run's topics (and the state and dead-letter topics the workers made for them)."""
        existing = set(self.admin.list_topics(timeout=30).topics)
        mine = sorted({t for t in existing for name in self.names if _made_for(t, name)})
        if not mine:
            return
        for topic, future in self.admin.delete_topics(mine, operation_timeout=60).items():
            try:
                future.result(timeout=90)
            except KafkaException as exc:
                log.warning("could not delete topic=%s: %s", topic, exc)
        log.info("deleted topics=%d", len(mine))

    def preload_events(
        self, topic: str, events: int, keys: int, partitions: int, encode: EventEncoding | None = None, seed: int = 0
    ) -> Produced:
        """`events` events over `keys` keys, each value encoded by `encode` (default msgpack, raw float32
        x) before the clock starts, then sent as fast as the client goes."""
        order, encoded = encoded_events(events, keys, encode or event_encoder("msgpack", topic), seed)
        names = [key_name(k) for k in range(keys)]
        where = [partition_of(k, partitions) for k in names]
        producer = FastProducer(self.kafka)
        started = time.monotonic()
        for k, value in zip(order, encoded, strict=True):
            producer.send(topic, names[k], value, where[k])
        producer.flush()
        return Produced(events, time.monotonic() - started)

    def produce_keyed(self, topic: str, records: Iterable[tuple[bytes, bytes]], partitions: int, **extra: Any) -> int:
        """Each (key, value) to the key's partition; returns the count."""
        producer = FastProducer(self.kafka, **extra)
        count = 0
        for key, value in records:
            producer.send(topic, key, value, partition_of(key, partitions))
            count += 1
            if count % 10_000 == 0:
                producer.poll()
        producer.flush()
        return count

    def read_predictions(
        self,
        topic: str,
        partitions: int,
        expected: int,
        timeout: float = 120.0,
        decode: PredictionDecoding = decode_prediction,
    ) -> Predictions:
        """Every prediction of the topic (values read by `decode`, msgpack unless told), until `expected`
        distinct events have one and every partition is read to its end (or `timeout` seconds pass:
        what was read is returned)."""
        consumer = Consumer(self.kafka.consumer(f"bench-{self.run}-reader", **{"enable.partition.eof": True}))
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        log_ms: list[int] = []
        ts: list[int] = []
        src: list[int] = []
        y = array("d")  # every prediction's y, flat: no Python float object per value
        seen: set[int] = set()
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if len(at_end) == partitions and len(seen) >= expected:
                    break
                for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                    error = msg.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            raise BenchError(f"reading {topic} failed: {error}")
                        at_end.add(position(msg)[0])
                        continue
                    at_end.discard(position(msg)[0])
                    kind, appended = msg.timestamp()
                    if kind != TIMESTAMP_LOG_APPEND_TIME:
                        raise BenchError(f"{topic} must have message.timestamp.type=LogAppendTime")
                    try:
                        prediction = decode(msg.value())
                    except CodecError as exc:
                        raise BenchError(f"unreadable prediction in {topic}: {exc}") from exc
                    log_ms.append(appended)
                    ts.append(prediction.ts)
                    where = (prediction.partition << 40) | prediction.offset
                    src.append(where)
                    y.extend(prediction.y)
                    seen.add(where)
        finally:
            consumer.close()
        values = np.frombuffer(y, np.float64).reshape(len(src), -1) if src else np.empty((0, 1))
        return Predictions(np.array(log_ms, np.int64), np.array(ts, np.int64), np.array(src, np.int64), values)


def _made_for(topic: str, name: str) -> bool:
    """`name` itself, a worker's `<name>.state` and `.dlq`, or a Quix app's internal topic of group
    `name` (`<type>__<group>--<topic>--<store>`: the peer's changelog)."""
    return topic == name or topic.startswith(name + ".") or f"__{name}--" in topic


@dataclass(frozen=True)
class Predictions:
    """Per prediction read back: broker append time (ms), the event's ts (ms), its source event, its y."""

    log_ms: np.ndarray
    event_ts: np.ndarray
    src: np.ndarray  # partition << 40 | offset
    y: np.ndarray  # [predictions, outputs]

    @property
    def count(self) -> int:
        return int(self.src.size)

    @property
    def distinct(self) -> int:
        return int(np.unique(self.src).size)

    @property
    def first_ms(self) -> float:
        return float(self.log_ms.min()) if self.count else float("nan")

    @property
    def last_ms(self) -> float:
        return float(self.log_ms.max()) if self.count else float("nan")

    def latency_ms(self) -> np.ndarray:
        return (self.log_ms - self.event_ts).astype(np.float64)
