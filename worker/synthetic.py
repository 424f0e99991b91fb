"""`lstm-worker produce`: synthetic events for the demo, the tests and the benchmark.

Each key gets `events_per_key` random feature vectors; the keys' events are shuffled
together (per-key order kept), so rounds see real interleaving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from confluent_kafka.admin import AdminClient

from worker.config import KafkaConfig
from worker.formats import event_encoder
from worker.kafka.output import OutputProducer
from worker.kafka.topics import create_topic, partition_count
from worker.options import Format

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient


@dataclass(frozen=True)
class Produced:
    records: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")


def key_name(index: int) -> bytes:
    return f"key-{index:07d}".encode()


def interleaving(events: int, keys: int, seed: int) -> np.ndarray:
    """Key index of each event in send order: the keys as evenly as possible, shuffled together."""
    order = np.arange(events) % keys
    np.random.default_rng(seed).shuffle(order)
    return order


def produce_synthetic(
    kafka: KafkaConfig,
    *,
    topic: str,
    keys: int,
    events_per_key: int,
    features: int,
    rate: float,
    seed: int,
    partitions: int,
    x_format: str = "bytes",
    value_format: Format = "msgpack",
    registry: SchemaRegistryClient | None = None,
) -> Produced:
    """`x_format` is msgpack's (float32 bytes or a list); JSON and Avro carry x as numbers."""
    admin = AdminClient(kafka.admin())
    if partition_count(admin, topic) is None:
        create_topic(admin, topic, partitions)
    producer = OutputProducer(kafka.producer())
    order = interleaving(keys * events_per_key, keys, seed)
    values = np.random.default_rng(seed + 1).standard_normal((len(order), features)).astype(np.float32)
    encode = event_encoder(value_format, topic, registry)
    as_list = value_format == "msgpack" and x_format == "list"
    started = time.monotonic()
    for i, k in enumerate(order):
        x = values[i].tolist() if as_list else values[i]
        producer.produce(topic, key_name(int(k)), encode(x, None, False, False))
        if rate > 0 and i % 64 == 0:
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    return Produced(len(order), time.monotonic() - started)
