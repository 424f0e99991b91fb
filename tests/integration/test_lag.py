"""lstm_worker_consumer_lag follows the real lag between commit points (at least once, with no
commit point for ten minutes): 0 once the worker caught up; exactly the number of events an open
transaction holds back from the worker's read_committed consumer (a lag that stays put, so a
stale gauge cannot pass for a fresh one); 0 again once they are committed and consumed."""

from __future__ import annotations

import re
import time
import uuid

import numpy as np
import pytest
from confluent_kafka import Producer

from tests.integration.kafka_io import metric
from worker.codec import encode_event
from worker.synthetic import produce_synthetic

pytestmark = pytest.mark.integration

KEYS, EVENTS, PARTITIONS, HELD = 30, 20, 3, 25
WITHIN_S = 15.0  # the gauge is refreshed every 2 s; the rest is slack for a busy machine


def lag(text: str) -> dict[str, float]:
    """Every lstm_worker_consumer_lag series: partition -> value."""
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^lstm_worker_consumer_lag\{partition="(\d+)"\} (\S+)$', text, re.MULTILINE)
    }


def wait_for_lag(worker, expected: dict[str, float], what: str) -> None:
    deadline = time.monotonic() + WITHIN_S
    while (seen := lag(worker.get("/metrics")[1])) != expected:
        assert time.monotonic() < deadline, f"{what}: lag {seen}, expected {expected}\n{worker.log()}"
        time.sleep(0.25)


def test_consumer_lag_gauge_is_the_real_lag_between_commit_points(kafka, topics, model_file, start_worker):
    produce_synthetic(
        kafka, topic=topics.input, keys=KEYS, events_per_key=EVENTS, features=4, rate=0, seed=2, partitions=PARTITIONS
    )
    worker = start_worker(model_file("lstm", (16, 8)), topics, "--commit-interval-ms", "600000")
    worker.wait_ready()
    deadline = time.monotonic() + 60
    while metric(worker.get("/metrics")[1], "lstm_worker_predictions_total") < KEYS * EVENTS:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)
    caught_up = {str(p): 0.0 for p in range(PARTITIONS)}
    wait_for_lag(worker, caught_up, "caught up, no commit point yet")

    # events on partition 0 the worker cannot read (its consumer reads committed records only)
    held = Producer(kafka.producer(**{"transactional.id": f"held-{uuid.uuid4().hex[:8]}"}))
    held.init_transactions(30)
    held.begin_transaction()
    rng = np.random.default_rng(6)
    for _ in range(HELD):
        held.produce(topics.input, encode_event(rng.standard_normal(4).astype(np.float32)), b"held", partition=0)
    assert held.flush(30) == 0
    wait_for_lag(worker, caught_up | {"0": float(HELD)}, "events held back by an open transaction")

    held.commit_transaction(30)  # the events, then the commit marker: both consumed, lag 0
    wait_for_lag(worker, caught_up, "the held events consumed")
    assert metric(worker.get("/metrics")[1], "lstm_worker_predictions_total") == KEYS * EVENTS + HELD
    assert worker.stop() == 0, worker.log()
