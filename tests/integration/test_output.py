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


def test_state_deliveries_are_reported_even_when_settings_ask_for_errors_only(
    kafka: KafkaConfig, topics: Topics
) -> None:
    """The state index needs every state record's offset; predictions report failures only.
    `-X delivery.report.only.error=true` must not silence the state topic's reports."""
    admin = AdminClient(kafka.admin())
    futures = admin.create_topics([NewTopic(t, 2, 1) for t in (topics.output, topics.state)])
    for future in futures.values():
        future.result(30)
    delivered: list[tuple[int, bytes, int, bool]] = []
    producer = OutputProducer(
        kafka.producer(**{"delivery.report.only.error": True}),
        topics.state,
        lambda p, key, offset, tombstone: delivered.append((p, key, offset, tombstone)),
    )
    producer.produce_many(topics.output, [(0, b"a"), (1, b"b")], [b"prediction-a", b"prediction-b"])
    producer.produce_many(topics.state, [(0, b"a"), (1, b"b"), (0, b"c")], [b"state-a", b"state-b", b"state-c"])
    producer.produce(topics.state, b"a", None, 0)
    producer.flush()
    producer.poll()
    assert sorted(delivered) == sorted(
        [(0, b"a", 0, False), (1, b"b", 0, False), (0, b"c", 1, False), (0, b"a", 2, True)]
    )
    assert len(read_all(kafka, topics.output)) == 2
