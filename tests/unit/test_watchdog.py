"""The bounds on a hanging process: a client call past its limit and a shutdown past its deadline
exit with their codes and a log line that says why, even while the main thread is blocked in C;
the transactional retries end; the stop signals reach a thread of their own."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from worker.errors import KafkaDeliveryError, StuckClientError
from worker.kafka import output
from worker.kafka.output import OutputProducer
from worker.watchdog import EXIT_SHUTDOWN_TIMEOUT, EXIT_STUCK, Watchdog

REPO = Path(__file__).resolve().parents[2]

# the main thread blocked in C: libc's sleep, through ctypes (the GIL released, no Python
# signal check until it returns), like a librdkafka call that does not return
BLOCKED_IN_C = "import ctypes; ctypes.CDLL(None).sleep(60)"
PRELUDE = "import logging, sys; logging.basicConfig(stream=sys.stderr, level=logging.INFO)\n"


def spawn(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_call_stuck_past_its_limit_exits_70_naming_the_call_and_the_librdkafka_issues():
    proc = spawn(f"""
        from worker.watchdog import Watchdog
        watchdog = Watchdog()
        watchdog.start()
        with watchdog.guard("producer.send_offsets_to_transaction", 0.5):
            {BLOCKED_IN_C}
    """)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_STUCK, err
    assert "producer.send_offsets_to_transaction did not return within 0.5 s" in err, err
    assert "confluentinc/librdkafka#5456, #5511" in err and "exiting with code 70" in err, err


def test_sigterm_is_taken_while_the_main_thread_is_blocked_in_c_and_the_shutdown_is_bounded():
    """The signal reaches the stop callback at once; the stop cannot finish (the main thread
    never returns), so the deadline ends the process with 75 and says so."""
    proc = spawn(f"""
        from worker.shutdown import StopSignals, stop_signals_blocked
        from worker.watchdog import Watchdog
        with stop_signals_blocked():
            watchdog = Watchdog()
            watchdog.start()
            StopSignals(1.0, watchdog).start(lambda: print("stop requested", flush=True))
            print("blocking", flush=True)
            with watchdog.guard("producer.flush", 60):
                {BLOCKED_IN_C}
    """)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "blocking\n"
        time.sleep(0.3)  # into the C call
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == EXIT_SHUTDOWN_TIMEOUT, err
    assert out == "stop requested\n", out + err
    assert "shutdown (SIGTERM) did not finish within 1 s (--shutdown-timeout-s), in producer.flush" in err, err
    assert took < 1.0 + 10, "the deadline, not the 60 s call, ends the process"


def test_a_guard_that_returns_in_time_leaves_nothing_to_enforce():
    exits: list[int] = []
    watchdog = Watchdog(exit=exits.append)
    with watchdog.guard("consumer.committed", 1.0):
        watchdog.check(time.monotonic())
    watchdog.check(time.monotonic() + 3600)
    assert exits == []
    with watchdog.guard("consumer.committed", 1.0):
        watchdog.check(time.monotonic() + 2.0)
    assert exits == [EXIT_STUCK]
    watchdog.arm_shutdown(5.0, "SIGTERM")
    watchdog.arm_shutdown(3600.0, "SIGTERM")  # a second signal keeps the first deadline
    watchdog.check(time.monotonic() + 1.0)
    watchdog.check(time.monotonic() + 6.0)
    assert exits == [EXIT_STUCK, EXIT_SHUTDOWN_TIMEOUT]


def test_transactional_retries_end_at_the_transaction_timeout():
    """A broker away is retried for as long as the transaction could live, not forever; the
    last error is raised for the caller to abort."""
    producer = OutputProducer(
        {"bootstrap.servers": "127.0.0.1:1", "transactional.id": "t", "transaction.timeout.ms": 2500, "log_level": 0}
    )
    calls: list[float] = []

    def unreachable(timeout_s: float) -> None:
        calls.append(timeout_s)
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker away", retriable=True))

    started = time.monotonic()
    with pytest.raises(KafkaException) as raised:
        producer._retrying("commit_transaction", 60.0, unreachable)
    assert raised.value.args[0].code() == KafkaError._TRANSPORT
    assert 2.5 <= time.monotonic() - started < 10 and len(calls) >= 2 and set(calls) == {60.0}

    def refused(timeout_s: float) -> None:
        calls.append(timeout_s)
        raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))

    calls.clear()
    with pytest.raises(KafkaException):
        producer._retrying("commit_transaction", 60.0, refused)
    assert len(calls) == 1, "an error retrying cannot cure is raised at once"


def test_a_replaceable_call_that_does_not_return_raises_for_the_caller_to_replace_the_producer(monkeypatch):
    """A transaction call past its bound is left to its thread: the loop gets StuckClientError
    (and replaces the producer) instead of the process exiting; errors of a call that returns
    reach the caller as raised."""
    monkeypatch.setattr(output, "MARGIN_S", 0.2)
    producer = OutputProducer({"bootstrap.servers": "127.0.0.1:1", "transactional.id": "t", "log_level": 0})
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(StuckClientError, match=r"producer.send_offsets_to_transaction did not return within 0.3 s"):
        producer._retrying("send_offsets_to_transaction", 0.1, lambda _: release.wait(30), replaceable=True)
    assert time.monotonic() - started < 5
    stuck = [t for t in threading.enumerate() if t.name == "producer.send_offsets_to_transaction"]
    assert len(stuck) == 1 and stuck[0].daemon, "the stuck call is left to a daemon thread of its own"
    release.set()
    stuck[0].join(5)

    def fenced(_: float) -> None:
        raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))

    with pytest.raises(KafkaException) as raised:
        producer._retrying("commit_transaction", 0.1, fenced, replaceable=True)
    assert raised.value.args[0].code() == KafkaError._FENCED


class _Record:
    def topic(self) -> str:
        return "out"


def test_the_reports_of_records_an_abort_purged_are_not_failures():
    """An abort purges the transaction's queued records; their reports must not fail the next
    transaction's commit (they are replayed with the partitions' restore)."""
    producer = OutputProducer({"bootstrap.servers": "127.0.0.1:1", "transactional.id": "t", "log_level": 0})
    for code in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
        producer._delivered(KafkaError(code), _Record())  # type: ignore[arg-type]
    producer._raise_failure()  # nothing latched
    producer._delivered(KafkaError(KafkaError._MSG_TIMED_OUT), _Record())  # type: ignore[arg-type]
    with pytest.raises(KafkaDeliveryError):
        producer._raise_failure()
