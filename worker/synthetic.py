"""`lstm-worker produce`: synthetic events for the demo, the tests and the benchmark.

Each key gets `events_per_key` random feature vectors; the keys' events are shuffled
together (per-key order kept), so rounds see real interleaving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from confluent_kafka.admin import AdminClient

from worker.codec import encode_event
from worker.config import KafkaConfig
from worker.kafka.output import OutputProducer
from worker.kafka.topics import create_topic, partition_count


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
) -> Produced:
    admin = AdminClient(kafka.admin())
    if partition_count(admin, topic) is None:
        create_topic(admin, topic, partitions)
    producer = OutputProducer(kafka.producer())
    order = interleaving(keys * events_per_key, keys, seed)
    values = np.random.default_rng(seed + 1).standard_normal((len(order), features)).astype(np.float32)
    started = time.monotonic()
    for i, k in enumerate(order):
        x = values[i] if x_format == "bytes" else values[i].tolist()
        producer.produce(topic, key_name(int(k)), encode_event(x))
        if rate > 0 and i % 64 == 0:
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    return Produced(len(order), time.monotonic() - started)
