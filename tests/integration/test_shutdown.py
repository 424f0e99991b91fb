"""SIGTERM while the broker is away: the worker cannot flush or commit, so it stops at
--shutdown-timeout-s with exit code 75 and a log line that says why, having committed nothing
the broker did not acknowledge: once the broker is back, a new worker finishes the stream and
every prediction is exact."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient

from tests.integration.kafka_io import stream_until_a_quarter_predicted
from worker.config import KafkaConfig
from worker.kafka.topics import create_topic
from worker.verify import verify
from worker.watchdog import EXIT_SHUTDOWN_TIMEOUT

pytestmark = pytest.mark.integration

KEYS, EVENTS, PARTITIONS = 100, 60, 3
SHUTDOWN_TIMEOUT_S = 5.0
EXIT_MARGIN_S = 10.0  # the watchdog checks every quarter second; the rest is a busy machine's slack


def test_sigterm_during_a_broker_outage_exits_at_the_shutdown_timeout_and_loses_nothing(
    own_broker, topics, model_file, start_worker
):
    kafka = KafkaConfig(own_broker.bootstrap)
    model = model_file("lstm", (32, 16))
    create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS)
    args = ("--shutdown-timeout-s", str(SHUTDOWN_TIMEOUT_S), "--commit-interval-ms", "2000")
    worker = start_worker(model, topics, *args, bootstrap=own_broker.bootstrap)
    worker.wait_ready()
    producer = stream_until_a_quarter_predicted(kafka, worker, topics.input, KEYS, EVENTS, PARTITIONS, seed=7)

    own_broker.stop()
    time.sleep(1)  # predictions and states produced meanwhile stay unacknowledged
    assert worker.proc.poll() is None, worker.log()
    sent = time.monotonic()
    code = worker.stop(timeout=SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S)  # fails if SIGTERM is not obeyed in time
    took = time.monotonic() - sent
    log = worker.log_path.read_text()
    assert code == EXIT_SHUTDOWN_TIMEOUT, log[-5000:]
    assert f"shutdown (SIGTERM) did not finish within {SHUTDOWN_TIMEOUT_S:g} s (--shutdown-timeout-s)" in log, log
    assert took >= SHUTDOWN_TIMEOUT_S - 0.5, "it tried to finish for the whole timeout"

    own_broker.start()
    producer.join(120)
    assert not producer.is_alive()
    second = start_worker(model, topics, bootstrap=own_broker.bootstrap)
    second.wait_ready()
    report = verify(kafka, model_path=str(model), input_topic=topics.input, output_topic=topics.output, timeout_s=60)
    assert report.events == KEYS * EVENTS
    assert report.missing == 0 and report.wrong == 0 and report.unexpected == 0, report.summary() + second.log()
    assert second.stop() == 0, second.log()
