"""The output producer on a real broker: many records in one call, through a full queue."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.conftest import Topics
from tests.integration.kafka_io import read_all
from worker.config import KafkaConfig
from worker.kafka.output import OutputProducer


def test_produce_many_keeps_every_record_in_order_through_a_full_queue(kafka: KafkaConfig, topics: Topics) -> None:
    """A queue of 7 records: most of the 600 meet BufferError and go through the waiting path."""
    admin = AdminClient(kafka.admin())
    admin.create_topics([NewTopic(topics.output, 3, 1)])[topics.output].result(30)
    producer = OutputProducer(kafka.producer(**{"queue.buffering.max.messages": 7, "linger.ms": 0}))
    targets = [(i % 3, b"key-%d" % (i % 10)) for i in range(600)]
    values = [b"value-%d" % i for i in range(600)]
    producer.produce_many(topics.output, targets, values)
    producer.flush()
    records = read_all(kafka, topics.output)
    assert len(records) == 600
    for p in range(3):
        got = [(r.key, r.value) for r in records if r.partition == p]
        want = [(targets[i][1], values[i]) for i in range(600) if targets[i][0] == p]
        assert got == want, f"partition {p}: records lost, duplicated or out of order"
