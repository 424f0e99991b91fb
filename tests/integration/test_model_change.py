"""A worker started with another model than the one that wrote the states: `reset` starts
those keys from zero and counts them, `fail` stops at start with a message that says what to do."""

from __future__ import annotations

import time

import msgpack
import pytest

from tests.integration.kafka_io import metric, read_all
from worker.synthetic import produce_synthetic

pytestmark = pytest.mark.integration

KEYS = 20


def wait_predicted(worker, count: int) -> None:
    deadline = time.monotonic() + 60
    while metric(worker.get("/metrics")[1], "lstm_worker_predictions_total") < count:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)


def test_model_mismatch_reset_and_fail(kafka, topics, model_file, start_worker):
    old, new = model_file("lstm", (16, 8), seed=3), model_file("lstm", (16, 8), seed=4)
    produce_synthetic(kafka, topic=topics.input, keys=KEYS, events_per_key=5, features=4, rate=0, seed=1, partitions=2)
    first = start_worker(old, topics)
    first.wait_ready()
    wait_predicted(first, KEYS * 5)
    assert first.stop() == 0

    refusing = start_worker(new, topics, "--on-model-mismatch", "fail")
    assert refusing.proc.wait(90) == 2, refusing.log()
    assert "--on-model-mismatch reset" in refusing.log()

    resetting = start_worker(new, topics)
    resetting.wait_ready()
    produce_synthetic(kafka, topic=topics.input, keys=KEYS, events_per_key=1, features=4, rate=0, seed=2, partitions=2)
    wait_predicted(resetting, KEYS)
    assert metric(resetting.get("/metrics")[1], "lstm_worker_model_mismatch_total") == KEYS
    assert resetting.stop() == 0
    latest = {r.key: msgpack.unpackb(r.value) for r in read_all(kafka, topics.output)}  # in offset order
    assert len(latest) == KEYS
    assert {p["step"] for p in latest.values()} == {1}, "the keys started again from zero state"


def test_a_model_of_another_feature_count_is_refused_at_start(topics, model_file, start_worker):
    """--features says what the producers send: a model that cannot take it never starts."""
    refusing = start_worker(model_file("lstm", (16, 8)), topics, "--features", "3")
    assert refusing.proc.wait(90) == 2, refusing.log()
    assert "takes 4 features per step, but --features says the events carry 3" in refusing.log()
