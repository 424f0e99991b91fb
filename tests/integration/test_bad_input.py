"""Bad records go to the dead-letter topic with their reason; the good ones around them are
predicted correctly; the worker keeps running; /metrics counts what happened."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from tests.integration.kafka_io import metric, produce, read_all
from worker.codec import decode_prediction, encode_event
from worker.kafka.topics import create_topic
from worker.verify import verify

pytestmark = pytest.mark.integration

KEYS, EVENTS, PARTITIONS, MAX_BYTES = 20, 10, 4, 2000


def bad_records() -> list[tuple[bytes | None, bytes | None, str]]:
    pack = msgpack.packb
    return [
        (b"bad-decode", b"\xc1\xff not msgpack", "decode"),
        (b"bad-shape", pack({"x": [1.0, 2.0, 3.0]}), "shape"),
        (b"bad-nan", pack({"x": [1.0, math.nan, 0.0, 0.0]}), "non_finite"),
        (b"bad-inf", pack({"x": [1.0, math.inf, 0.0, 0.0]}), "non_finite"),
        (b"bad-missing", pack({"ts": 5}), "missing_field"),
        (None, encode_event([0.1, 0.2, 0.3, 0.4]), "no_key"),
        (b"bad-large", pack({"x": [0.0] * 4, "pad": b"\0" * (2 * MAX_BYTES)}), "too_large"),
        (b"bad-type", pack({"x": "four"}), "type"),
    ]


def test_bad_records_go_to_dead_letters_and_metrics_count_everything(kafka, topics, model_file, start_worker):
    model = model_file("lstm", (16, 8))
    rng = np.random.default_rng(5)
    good = [
        (f"k{k}".encode(), encode_event(rng.standard_normal(4).astype(np.float32)))
        for _ in range(EVENTS)
        for k in range(KEYS)
    ]
    bad = bad_records()
    records = list(good)
    for i, (key, value, _) in enumerate(bad):  # interleave the bad among the good
        records.insert(1 + i * (len(good) // len(bad)), (key, value))
    create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS)
    produce(kafka, topics.input, records)

    worker = start_worker(model, topics, "--max-event-bytes", str(MAX_BYTES))
    worker.wait_ready()
    report = verify(kafka, model_path=str(model), input_topic=topics.input, output_topic=topics.output, timeout_s=30)
    assert report.ok and report.events == KEYS * EVENTS and report.predictions == KEYS * EVENTS, report.summary()
    assert report.invalid_events == len(bad)

    dead = read_all(kafka, topics.dlq)
    assert sorted(r.headers["error"].decode() for r in dead) == sorted(reason for *_, reason in bad)
    sent = {(key, value) for key, value, _ in bad}
    assert {(r.key, r.value) for r in dead} == sent  # original bytes kept
    for r in dead:
        assert r.headers["src.topic"].decode() == topics.input
        assert r.headers["error.detail"]
        source = [
            rec
            for rec in read_all(kafka, topics.input)
            if rec.offset == int(r.headers["src.offset"]) and rec.partition == int(r.headers["src.partition"])
        ]
        assert source and source[0].value == r.value

    status, text = worker.get("/metrics")
    assert status == 200
    assert worker.proc.poll() is None, "the worker must keep running"
    assert metric(text, "lstm_worker_events_total", result="predicted") == KEYS * EVENTS
    assert metric(text, "lstm_worker_predictions_total") == KEYS * EVENTS
    assert metric(text, "lstm_worker_events_total", result="dead_letter") == len(bad)
    assert metric(text, "lstm_worker_dead_letters_total", reason="non_finite") == 2
    assert metric(text, "lstm_worker_dead_letters_total", reason="no_key") == 1
    assert metric(text, "lstm_worker_cache_lookups_total", result="new") == KEYS
    assert metric(text, "lstm_worker_assigned_partitions") == PARTITIONS
    assert metric(text, "lstm_worker_round_keys_count") >= 1
    assert metric(text, "lstm_worker_step_seconds_count") == metric(text, "lstm_worker_round_keys_count")
    assert metric(text, "lstm_worker_latency_seconds_count") == KEYS * EVENTS
    assert worker.get("/healthz")[0] == 200 and worker.get("/readyz")[0] == 200
    assert worker.stop() == 0


def _committed(kafka, topics, partitions: int) -> list[int]:
    consumer = Consumer(kafka.consumer(f"group-{topics.input}"))
    try:
        return [
            tp.offset for tp in consumer.committed([TopicPartition(topics.input, p) for p in range(partitions)], 30)
        ]
    finally:
        consumer.close()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once_v2"])
def test_a_dead_letter_that_cannot_be_written_stops_the_worker_without_committing_past_it(
    kafka, topics, model_file, start_worker, guarantee
):
    """The dead-letter topic refuses the record (larger than its max.message.bytes): the worker
    stops with the reason instead of committing past it; once the topic is fixed, a restart
    writes the dead letter and predicts every event, nothing lost."""
    model = model_file("lstm", (16, 8))
    admin = AdminClient(kafka.admin())
    create_topic(admin, topics.input, 1)
    create_topic(admin, topics.dlq, 1, {"max.message.bytes": "1000"})
    rng = np.random.default_rng(9)
    good = [encode_event(rng.standard_normal(4).astype(np.float32)) for _ in range(10)]
    bad = msgpack.packb({"x": rng.bytes(3000)})  # wrong shape, and incompressible
    produce(kafka, topics.input, [(b"k", v) for v in good[:5]] + [(b"bad", bad)] + [(b"k", v) for v in good[5:]])
    bad_offset = 5

    first = start_worker(model, topics, "--processing-guarantee", guarantee)
    code = first.proc.wait(120)
    log = first.log()
    assert code == 2, log
    assert f"delivery to topic '{topics.dlq}' failed" in log and "Message size too large" in log, log
    assert all(offset <= bad_offset for offset in _committed(kafka, topics, 1)), log
    if guarantee == "exactly_once_v2":  # nothing past the committed offsets is visible
        assert all(decode_prediction(r.value).offset < bad_offset for r in read_all(kafka, topics.output))
        return

    fixed = ConfigResource(
        "topic",
        topics.dlq,
        incremental_configs=[ConfigEntry("max.message.bytes", "1048588", incremental_operation=AlterConfigOpType.SET)],
    )
    admin.incremental_alter_configs([fixed])[fixed].result(30)
    second = start_worker(model, topics)
    second.wait_ready()
    report = verify(kafka, model_path=str(model), input_topic=topics.input, output_topic=topics.output, timeout_s=30)
    assert report.ok and report.events == 10, report.summary()
    dead = read_all(kafka, topics.dlq)
    assert [(r.key, r.value, r.headers["error"]) for r in dead] == [(b"bad", bad, b"shape")]
    assert second.stop() == 0
