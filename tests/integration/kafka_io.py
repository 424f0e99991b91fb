"""Plain Kafka reads and writes for the integration tests (no worker code involved)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from worker.config import KafkaConfig


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp: int = -1  # ms; the producer's create time, or the broker's log append time


def produce(kafka: KafkaConfig, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    """Send in order, one partition per key by the default partitioner; fail on any error."""
    errors: list[str] = []
    producer = Producer(kafka.producer(on_delivery=lambda err, _msg: err and errors.append(str(err))))
    for key, value in records:
        producer.produce(topic, value, key)
    assert producer.flush(30) == 0 and not errors, errors


def read_all(kafka: KafkaConfig, topic: str, timeout: float = 30.0) -> list[Record]:
    """Every record of the topic as of now (read_committed), in partition/offset order."""
    admin = AdminClient(kafka.admin())
    partitions = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer = Consumer(kafka.consumer("tests-read-all", **{"enable.partition.eof": True}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[Record] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"could not read {topic} to its end in {timeout} s"
            for m in consumer.consume(1000, timeout=0.5):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(m.partition())
                    continue
                at_end.discard(m.partition())
                headers = {k: v for k, v in (m.headers() or [])}
                records.append(Record(m.partition(), m.offset(), m.key(), m.value(), headers, m.timestamp()[1]))
    finally:
        consumer.close()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def stream_until_a_quarter_predicted(
    kafka: KafkaConfig, worker: Any, topic: str, keys: int, events: int, partitions: int, seed: int
) -> threading.Thread:
    """A synthetic stream at 1,000 events/s in a thread, returned once the worker has predicted
    a quarter of it (within 60 s): the moment a fault test strikes."""
    from worker.synthetic import produce_synthetic

    producer = threading.Thread(
        target=produce_synthetic,
        args=(kafka,),
        kwargs=dict(
            topic=topic, keys=keys, events_per_key=events, features=4, rate=1000, seed=seed, partitions=partitions
        ),
    )
    producer.start()
    deadline = time.monotonic() + 60
    while metric(worker.get("/metrics")[1], "lstm_worker_predictions_total") < keys * events / 4:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)
    return producer
