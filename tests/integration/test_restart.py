"""A worker stopped by SIGTERM mid-stream and replaced by a fresh process: the new one
restores the keys' states from the state topic, and every prediction is still exact."""

from __future__ import annotations

import threading
import time

import pytest

from tests.integration.kafka_io import metric
from worker.synthetic import produce_synthetic
from worker.verify import verify

pytestmark = pytest.mark.integration

KEYS, EVENTS, PARTITIONS = 200, 50, 4


def test_restart_restores_state_and_keeps_predictions_exact(kafka, topics, model_file, start_worker):
    model = model_file("lstm", (100, 200))
    produce_synthetic(
        kafka, topic=topics.input, keys=KEYS, events_per_key=1, features=4, rate=0, seed=1, partitions=PARTITIONS
    )  # creates the topic; the first event of every key
    first = start_worker(model, topics)
    first.wait_ready()
    rest = threading.Thread(
        target=produce_synthetic,
        args=(kafka,),
        kwargs=dict(
            topic=topics.input,
            keys=KEYS,
            events_per_key=EVENTS - 1,
            features=4,
            rate=2500,
            seed=2,
            partitions=PARTITIONS,
        ),
    )
    rest.start()
    deadline = time.monotonic() + 60
    while (before_stop := metric(first.get("/metrics")[1], "lstm_worker_predictions_total")) < KEYS * EVENTS / 4:
        assert time.monotonic() < deadline, first.log()
        time.sleep(0.1)
    assert first.stop() == 0, first.log()
    assert before_stop < KEYS * EVENTS, "the stop must come mid-stream"

    second = start_worker(model, topics)
    second.wait_ready()
    rest.join(60)
    report = verify(kafka, model_path=str(model), input_topic=topics.input, output_topic=topics.output, timeout_s=30)
    assert report.ok and report.events == KEYS * EVENTS, report.summary() + first.log() + second.log()
    assert report.duplicates == 0, "a clean stop commits everything it predicted"
    text = second.get("/metrics")[1]
    assert metric(text, "lstm_worker_restore_records_total") >= KEYS  # every key had a state to restore
    assert metric(text, "lstm_worker_cache_lookups_total", result="new") == 0
    assert second.stop() == 0
