"""--state-ttl: keys idle for longer than the TTL of stream time are tombstoned in the state
topic and dropped; active keys are kept."""

from __future__ import annotations

import time

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.kafka_io import metric, produce, read_all
from worker.codec import encode_event
from worker.kafka.topics import create_topic

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000  # event time (ms) of the idle keys' last events


def test_idle_keys_expire_by_stream_time(kafka, topics, model_file, start_worker):
    rng = np.random.default_rng(3)
    x = lambda: rng.standard_normal(4).astype(np.float32)  # noqa: E731
    idle = [(f"idle-{i}".encode(), encode_event(x(), ts=T0 + j)) for j in range(3) for i in range(5)]
    active = [(f"active-{i}".encode(), encode_event(x(), ts=T0 + 10_000 + j)) for j in range(3) for i in range(5)]
    create_topic(AdminClient(kafka.admin()), topics.input, 1)
    produce(kafka, topics.input, idle + active)

    worker = start_worker(model_file("lstm", (16, 8)), topics, "--state-ttl", "2")
    worker.wait_ready()
    deadline = time.monotonic() + 60
    while metric(worker.get("/metrics")[1], "lstm_worker_expired_keys_total") < 5:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)
    text = worker.get("/metrics")[1]
    assert metric(text, "lstm_worker_expired_keys_total") == 5, "only the idle keys expire"
    assert metric(text, "lstm_worker_predictions_total") == 30
    assert worker.stop() == 0

    latest = {r.key: r.value for r in read_all(kafka, topics.state)}
    assert all(latest[f"idle-{i}".encode()] is None for i in range(5)), "idle keys are tombstoned"
    assert all(latest[f"active-{i}".encode()] is not None for i in range(5)), "active keys are kept"
