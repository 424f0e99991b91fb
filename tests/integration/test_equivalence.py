"""The product's contract on a real broker: every streamed prediction equals the original
model on the key's full history (1e-5), whatever the interleaving or the cache size."""

from __future__ import annotations

import pytest

from tests.integration.kafka_io import metric
from worker.synthetic import produce_synthetic
from worker.verify import verify

pytestmark = pytest.mark.integration

KEYS, EVENTS, PARTITIONS = 200, 50, 4


@pytest.mark.parametrize(
    ("cell", "units", "extra", "events"),
    [
        ("lstm", (100, 200), (), EVENTS),
        # nearly every step of a key is an LRU miss read back by offset: fewer steps keep it short
        ("lstm", (100, 200), ("--cache-keys", "16"), 20),
        ("gru", (32, 16), (), EVENTS),
        ("simple", (32, 16), ("--max-steps", "3"), EVENTS),
    ],
    ids=["lstm", "lstm-cache16", "gru", "simplernn-maxsteps3"],
)
def test_every_prediction_equals_full_history(kafka, topics, model_file, start_worker, cell, units, extra, events):
    model = model_file(cell, units)
    produce_synthetic(
        kafka, topic=topics.input, keys=KEYS, events_per_key=events, features=4, rate=0, seed=11, partitions=PARTITIONS
    )
    worker = start_worker(model, topics, *extra)
    worker.wait_ready()

    report = verify(kafka, model_path=str(model), input_topic=topics.input, output_topic=topics.output, timeout_s=60)

    lookups = {
        result: metric(worker.get("/metrics")[1], "lstm_worker_cache_lookups_total", result=result)
        for result in ("hit", "miss", "new")
    }
    assert worker.stop() == 0, worker.log()
    assert lookups["new"] == KEYS
    if "--cache-keys" in extra:  # the LRU holds 16 states: most keys come back from the state topic
        assert lookups["miss"] > lookups["hit"], lookups
    assert report.events == KEYS * events
    assert report.keys == KEYS
    assert report.missing == 0, report.summary()
    assert report.wrong == 0, report.summary()
    assert report.duplicates == 0 and report.predictions == KEYS * events, report.summary()
    assert report.max_abs_diff <= 1e-5
