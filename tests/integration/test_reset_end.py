"""`reset` restarts a key's sequence from zero state; `end` drops its state with a
tombstone in the state topic (once the input offsets past it are committed)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.kafka_io import produce, read_all
from worker.codec import decode_state, encode_event
from worker.kafka.topics import create_topic
from worker.verify import verify

pytestmark = pytest.mark.integration


def test_reset_and_end(kafka, topics, model_file, start_worker):
    model = model_file("lstm", (16, 8))
    rng = np.random.default_rng(9)

    def event(**flags: bool) -> bytes:
        return encode_event(rng.standard_normal(4).astype(np.float32), **flags)

    records = []
    for i in range(13):  # A: reset at 5, end at 9, then a new sequence of 3
        records.append((b"A", event(reset=i == 5, end=i == 9)))
        if i < 5:  # B: ends after its 5th event and never comes back
            records.append((b"B", event(end=i == 4)))
        records.append((b"C", event()))
    create_topic(AdminClient(kafka.admin()), topics.input, 2)
    produce(kafka, topics.input, records)

    worker = start_worker(model, topics)
    worker.wait_ready()
    report = verify(kafka, model_path=str(model), input_topic=topics.input, output_topic=topics.output, timeout_s=30)
    assert report.ok and report.events == len(records), report.summary()
    assert worker.stop() == 0
    other = verify(
        kafka,
        model_path=str(model_file("lstm", (16, 8), seed=4)),
        input_topic=topics.input,
        output_topic=topics.output,
        timeout_s=10,
    )
    assert not other.ok and other.wrong == len(records), "verify must catch predictions of another model"

    latest = {r.key: r for r in read_all(kafka, topics.state)}
    assert latest[b"B"].value is None, "an ended key is tombstoned"
    sizes = [16, 16, 8, 8]
    a = decode_state(latest[b"A"].value, sizes)
    predictions = {r.key: msgpack.unpackb(r.value) for r in read_all(kafka, topics.output)}
    assert a.step == 3 and predictions[b"A"]["step"] == 3, "A restarted from zero after its end"
    assert a.src_offset == predictions[b"A"]["src"][1]
    c = decode_state(latest[b"C"].value, sizes)
    assert c.step == 13 and np.abs(c.state).sum() > 0
