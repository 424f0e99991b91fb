"""The broker goes away mid-stream and comes back on the same data: the worker waits it
out without exiting and with backoff, loses nothing, and every prediction is still exact."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.kafka_io import stream_until_a_quarter_predicted
from worker.config import KafkaConfig
from worker.kafka.topics import create_topic
from worker.verify import verify

pytestmark = pytest.mark.integration

KEYS, EVENTS, PARTITIONS = 100, 60, 3


def test_broker_outage_is_waited_out(own_broker, topics, model_file, start_worker):
    kafka = KafkaConfig(own_broker.bootstrap)
    model = model_file("lstm", (32, 16))
    create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS)
    worker = start_worker(model, topics, bootstrap=own_broker.bootstrap)
    worker.wait_ready()
    producer = stream_until_a_quarter_predicted(kafka, worker, topics.input, KEYS, EVENTS, PARTITIONS, seed=5)

    own_broker.stop()
    refused = worker.log_path.read_text().count("Connection refused")
    time.sleep(5)
    assert worker.proc.poll() is None, "the worker must wait for the broker, not exit"
    # with backoff: librdkafka's re-bootstrap loop logged a failed connection after failed
    # connection (29 in these 5 s, in a run before the worker turned it off); backing off, 0
    refused = worker.log_path.read_text().count("Connection refused") - refused
    assert refused <= 5, f"{refused} failed connections logged in 5 s of outage\n" + worker.log()
    own_broker.start()

    producer.join(120)
    assert not producer.is_alive()
    report = verify(kafka, model_path=str(model), input_topic=topics.input, output_topic=topics.output, timeout_s=60)
    assert report.events == KEYS * EVENTS
    assert report.missing == 0 and report.wrong == 0 and report.unexpected == 0, report.summary() + worker.log()
    assert worker.proc.poll() is None, worker.log()
    assert worker.stop() == 0
