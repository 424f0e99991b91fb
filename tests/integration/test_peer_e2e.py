"""The benchmark's Quix Streams peer (bench/peer.py) for real: its own venv's python (`make peer`),
a real broker, events with `reset` and `end` among them; every prediction checked against the
model on the key's full history by `lstm-worker verify`, and written to its event's partition."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from bench.kafka_io import BenchKafka
from bench.peer_run import PEER_PYTHON, REPO, PeerLauncher, export_weights
from bench.run import reference_model
from worker.codec import decode_prediction, encode_event
from worker.config import KafkaConfig
from worker.synthetic import key_name
from worker.verify import verify

pytestmark = pytest.mark.integration

KEYS, EVENTS, PARTITIONS = 30, 600, 3


def _events() -> list[tuple[bytes, bytes]]:
    """Keys at random; every 7th event of a key resets it, every 11th ends its sequence."""
    rng = np.random.default_rng(5)
    seen = [0] * KEYS
    records = []
    for k in rng.integers(0, KEYS, EVENTS).tolist():
        seen[k] += 1
        x = rng.standard_normal(4).astype(np.float32)
        value = encode_event(x, ts=1_795_000_000_000 + len(records), reset=seen[k] % 7 == 0, end=seen[k] % 11 == 0)
        records.append((key_name(k), value))
    return records


def _partitions_of(kafka: KafkaConfig, topic: str) -> list[tuple[int, int]]:
    """(Kafka partition, the prediction's src partition) of every prediction."""
    consumer = Consumer(kafka.consumer(f"peer-e2e-{uuid.uuid4().hex[:6]}", **{"enable.partition.eof": True}))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    pairs, ends = [], set()
    try:
        while len(ends) < PARTITIONS:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                if msg.error() is not None:
                    ends.add(msg.partition())
                    continue
                pairs.append((msg.partition(), decode_prediction(msg.value()).partition))
    finally:
        consumer.close()
    return pairs


def test_the_peer_predicts_every_event_as_the_model_on_its_full_history(broker: str, tmp_path: Path):
    if not (REPO / PEER_PYTHON).is_file():
        pytest.skip(f"no peer venv at {PEER_PYTHON}: `make peer` creates it (`make test` does)")
    model, _, _ = reference_model(tmp_path)
    kafka = KafkaConfig(broker)
    bench = BenchKafka(kafka, f"peer-e2e-{uuid.uuid4().hex[:8]}")
    peers = PeerLauncher(kafka, str(REPO / PEER_PYTHON), export_weights(model, tmp_path / "model.npz"), tmp_path)
    try:
        events = bench.create(bench.name("events"), PARTITIONS)
        output = bench.create_output(bench.name("predictions"), PARTITIONS)
        assert bench.produce_keyed(events, _events(), PARTITIONS) == EVENTS
        peer = peers.start("peer", events, output, bench.name("group"))
        peer.wait_ready(120)
        peer.wait_served(EVENTS, stall_s=60)
        peers.stop(peer)
        report = verify(kafka, model_path=str(model), input_topic=events, output_topic=output, timeout_s=20)
        pairs = _partitions_of(kafka, output)
    finally:
        peers.stop_all()
        bench.delete_all()
    assert report.ok, report.summary()
    assert (report.events, report.keys, report.predictions) == (EVENTS, KEYS, EVENTS)
    assert report.duplicates == 0 and report.max_abs_diff <= 1e-5
    assert len(pairs) == EVENTS and all(kafka_p == src_p for kafka_p, src_p in pairs)
