"""Two members start together on a large state topic, so the group rebalances while the first
is still restoring: the rebalance is served during the restore (no hang, no crash), both end up
ready with a share of the partitions, and events are predicted from the restored states."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.kafka_io import metric, produce, read_all
from worker.codec import encode_event, encode_state
from worker.kafka.topics import create_topic
from worker.model import fingerprint, load_model
from worker.synthetic import key_name
from worker.verify import verify

pytestmark = pytest.mark.integration

KEYS, ACTIVE, PARTITIONS, UNITS, STEP = 150_000, 1_000, 6, (32, 16), 5


def test_rebalance_during_restore(kafka, topics, model_file, start_worker):
    model = model_file("lstm", UNITS)
    sizes = [UNITS[0], UNITS[0], UNITS[1], UNITS[1]]
    admin = AdminClient(kafka.admin())
    create_topic(admin, topics.input, PARTITIONS)
    create_topic(admin, topics.state, PARTITIONS, {"cleanup.policy": "compact"})
    # every key has a stored state (zeros, STEP steps in); the default partitioner puts a key's
    # state in the partition of the same number as its events, as co-partitioning requires
    value = encode_state(
        np.zeros(sum(sizes), np.float32),
        sizes,
        model=fingerprint(load_model(str(model))),
        step=STEP,
        partition=0,
        offset=-1,
        ts=0,
    )
    produce(kafka, topics.state, [(key_name(k), value) for k in range(KEYS)])

    workers = [start_worker(model, topics) for _ in range(2)]
    deadline = time.monotonic() + 120
    assert all(w.wait_http(deadline) for w in workers), "\n".join(w.log() for w in workers)

    def settled(w) -> bool:
        return w.get("/readyz")[0] == 200 and metric(w.get("/metrics")[1], "lstm_worker_assigned_partitions") > 0

    while not all(settled(w) for w in workers):
        assert time.monotonic() < deadline, "\n".join(w.log() for w in workers)
        time.sleep(0.2)
    assigned = [metric(w.get("/metrics")[1], "lstm_worker_assigned_partitions") for w in workers]
    assert sum(assigned) == PARTITIONS and min(assigned) > 0, assigned

    rng = np.random.default_rng(4)
    produce(
        kafka,
        topics.input,
        [(key_name(k), encode_event(rng.standard_normal(4).astype(np.float32))) for k in range(ACTIVE)],
    )
    report = verify(kafka, model_path=str(model), input_topic=topics.input, output_topic=topics.output, timeout_s=60)
    assert report.ok and report.predictions == ACTIVE, report.summary()  # zero state == a fresh sequence
    steps = {msgpack.unpackb(r.value)["step"] for r in read_all(kafka, topics.output)}
    assert steps == {STEP + 1}, "every key went on from its restored state"
    for w in workers:
        assert w.stop() == 0, w.log()
