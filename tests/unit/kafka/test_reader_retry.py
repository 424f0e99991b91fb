"""Transient errors of the state reader are waited out: which errors are transient, the backoff's
pacing and bound, a restore that retries its start in later steps instead of blocking the loop,
and restore reads that keep a partition awaited through a partition-level error. No broker: the
consumer is a scripted fake."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from worker.codec import encode_state
from worker.errors import TopicError, WorkerError
from worker.kafka import reader as reader_module
from worker.kafka.reader import Backoff, Records, TopicReader, transient
from worker.metrics import Metrics
from worker.state.cache import StateCache
from worker.state.restore import Restore, StableOffsets
from worker.state.store import StateStore

SIZES, MODEL = [3, 2], "model-a"

TRANSIENT = [
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
]
PERMANENT = [
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError._AUTHENTICATION,
    KafkaError._SSL,
    KafkaError.OFFSET_OUT_OF_RANGE,
    KafkaError._INVALID_ARG,
]


@pytest.mark.parametrize("code", TRANSIENT)
def test_errors_of_metadata_settling_or_brokers_away_are_transient(code):
    assert transient(KafkaError(code))


@pytest.mark.parametrize("code", PERMANENT)
def test_errors_a_retry_cannot_fix_are_not(code):
    assert not transient(KafkaError(code))


def test_retriable_is_transient_and_fatal_never():
    assert transient(KafkaError(KafkaError.NOT_ENOUGH_REPLICAS, retriable=True))
    assert not transient(KafkaError(KafkaError._TRANSPORT, fatal=True))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_backoff_spaces_attempts_warns_now_and_then_and_gives_up_past_its_bound(caplog):
    clock = Clock()
    backoff = Backoff("t.state", "watermarks", bound_s=60.0, first_s=0.1, max_s=5.0, warn_s=5.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="worker.kafka.reader")
    delays = []
    error = KafkaError(KafkaError._UNKNOWN_PARTITION)
    with pytest.raises(TopicError) as raised:
        while True:
            assert backoff.due()
            delays.append(backoff.failed(error))
            assert not backoff.due()
            clock.sleep(delays[-1])
    assert delays[:7] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
    assert max(delays) == 5.0 and 59.0 <= sum(delays) <= 65.0
    warnings = [r.getMessage() for r in caplog.records]
    assert 10 <= len(warnings) <= 14, warnings  # every 5 s or so, not every attempt
    assert "topic=t.state" in warnings[0] and "code=_UNKNOWN_PARTITION" in warnings[0]
    message = str(raised.value)
    assert isinstance(raised.value, WorkerError) and "still failed after 6" in message
    assert "Unknown partition" in message and "check that the brokers are up" in message


def test_backoff_starts_over_after_a_success_and_a_permanent_error_is_raised_at_once():
    clock = Clock()
    backoff = Backoff("t", "watermarks", bound_s=10.0, clock=clock)
    backoff.failed(KafkaError(KafkaError._TRANSPORT))
    clock.sleep(9.0)
    backoff.succeeded()
    assert backoff.due() and backoff.failures == 0
    backoff.failed(KafkaError(KafkaError._TRANSPORT))
    clock.sleep(9.0)
    backoff.failed(KafkaError(KafkaError._TRANSPORT))  # 9 s since the first failure after the success
    with pytest.raises(TopicError, match="Topic authorization failed"):
        backoff.failed(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))


def test_backoff_wait_sleeps_at_most_as_asked():
    clock = Clock()
    backoff = Backoff("t", "watermarks", first_s=2.0, clock=clock, sleep=clock.sleep)
    assert backoff.wait(at_most=0.5)  # no failure yet: due at once, no sleep
    assert clock.now == 1000.0
    backoff.failed(KafkaError(KafkaError._TRANSPORT))
    assert not backoff.wait(at_most=0.5) and clock.now == 1000.5
    assert not backoff.wait(at_most=0.5) and not backoff.wait(at_most=0.5)
    assert backoff.wait(at_most=0.5) and clock.now == pytest.approx(1002.0)


class FakeReader:
    """The TopicReader calls a restore makes: watermarks fail as scripted, then the records come."""

    topic = "t.state"

    def __init__(self, failures: dict[int, list[int]], records: list[Records]) -> None:
        self.failures = failures  # partition -> error codes of its next watermark calls
        self.records = records
        self.calls: list[int] = []
        self.refreshes = 0
        self.read: dict[int, tuple[int, int]] | None = None

    def watermarks(self, partition: int) -> tuple[int, int]:
        self.calls.append(partition)
        pending = self.failures.get(partition)
        if pending:
            raise KafkaException(KafkaError(pending.pop(0)))
        return (0, 10) if partition == 0 else (0, 0)

    def refresh(self) -> None:
        self.refreshes += 1

    def read_partition_batches(self, offsets: dict[int, tuple[int, int]]) -> Iterator[Records]:
        self.read = offsets
        yield from self.records


def records(count: int) -> Records:
    value = encode_state(np.ones(sum(SIZES), np.float32), SIZES, model=MODEL, step=1, partition=0, offset=3, ts=0)
    return Records([0] * count, list(range(count)), [b"k%d" % i for i in range(count)], [value] * count)


def restore_with(
    reader: FakeReader, partitions: list[int], stable_offsets: StableOffsets | None = None
) -> tuple[Restore, StateStore, Clock]:
    store = StateStore(StateCache(64, sum(SIZES)), None, SIZES, MODEL, Metrics())  # type: ignore[arg-type]
    restore = Restore(store, reader, partitions, Metrics(), stable_offsets)  # type: ignore[arg-type]
    clock = Clock()
    restore._backoff.clock, restore._backoff.sleep = clock, clock.sleep
    return restore, store, clock


def test_a_restore_retries_its_start_in_later_steps():
    """_UNKNOWN_PARTITION while the metadata settles: each step makes one short attempt (after a
    metadata refresh) and returns to the loop; once the end offsets are known the records come."""
    reader = FakeReader({1: [KafkaError._UNKNOWN_PARTITION] * 3}, [records(10)])
    restore, store, clock = restore_with(reader, [0, 1])
    steps = 1
    while not restore.step(1000):
        steps += 1
        assert steps < 50
    assert reader.calls == [0, 1, 1, 1, 1], "partition 0's end is kept, 1 is asked again"
    assert reader.refreshes == 3
    assert steps == 4 and clock.now > 1000.0  # the backoff was waited out by sleeping, not spinning
    assert reader.read == {0: (0, 10)}  # an empty partition is not read
    assert len(store.index[0]) == 10 and restore.count == 10


def test_a_restore_gives_up_past_the_bound_with_what_to_check():
    reader = FakeReader({0: [KafkaError.LEADER_NOT_AVAILABLE] * 10_000}, [])
    restore, _, clock = restore_with(reader, [0])
    with pytest.raises(TopicError, match=r"still failed after 1[89]\d s .*Leader not available.*check"):
        for _ in range(10_000):
            restore.step(1000)
            clock.now += 1.0


def test_with_transactions_the_end_offsets_are_taken_only_once_the_committed_offsets_are_stable():
    """A previous owner's transaction with offsets pending may still commit its states: the end
    offsets asked before it is decided would leave those states out."""
    reader = FakeReader({}, [records(10)])
    asked: list[tuple[list[int], float]] = []

    def stable_offsets(partitions: list[int], timeout_s: float) -> None:
        asked.append((partitions, timeout_s))
        if len(asked) < 3:  # still pending: the offset fetch times out
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Timed out"))
        assert not reader.calls, "end offsets asked before the committed offsets were stable"

    restore, store, _ = restore_with(reader, [0, 1], stable_offsets)
    steps = 1
    while not restore.step(1000):
        steps += 1
        assert steps < 50
    assert [partitions for partitions, _ in asked] == [[0, 1]] * 3 and steps == 3
    assert reader.calls == [0, 1] and len(store.index[0]) == 10


def test_a_cancelled_partition_is_not_asked_again():
    reader = FakeReader({1: [KafkaError._TRANSPORT] * 10_000}, [records(3)])
    restore, _, _ = restore_with(reader, [0, 1])
    assert not restore.step(1000)
    restore.cancel(1)
    while not restore.step(1000):
        pass
    assert reader.read == {0: (0, 10)}


class FakeConsumer:
    """consume() answers as scripted (then nothing); assign and unassign are recorded."""

    def __init__(self, script: list[list[Message]], seconds: float = 0.0) -> None:
        self.script = script
        self.seconds = seconds  # each consume() call's wait
        self.assigned: list[object] = []

    def assign(self, partitions: list[object]) -> None:
        self.assigned = partitions

    def unassign(self) -> None:
        self.assigned = []

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        time.sleep(self.seconds)
        return self.script.pop(0) if self.script else []

    def list_topics(self, topic: str, timeout: float) -> None:
        return None

    def close(self) -> None:
        return None


def fake_reader(script: list[list[Message]], seconds: float = 0.0) -> TopicReader:
    reader = TopicReader({"group.id": "unit", "bootstrap.servers": "127.0.0.1:9"}, "t.state")
    reader._consumer.close()
    reader._consumer = FakeConsumer(script, seconds)  # type: ignore[assignment]
    return reader


def record(p: int, offset: int) -> Message:
    return Message(topic="t.state", partition=p, offset=offset, key=b"k%d" % offset, value=b"v")


def failure(p: int, code: int) -> Message:
    return Message(topic="t.state", partition=p, offset=-1001, error=KafkaError(code))


def test_a_partition_level_error_during_a_restore_read_keeps_the_partition_awaited(caplog):
    caplog.set_level(logging.WARNING, logger="worker.kafka.reader")
    reader = fake_reader(
        [
            [record(0, 0), failure(1, KafkaError._UNKNOWN_PARTITION)],
            [],  # nothing for a moment: an empty batch, the restore returns to the loop
            [failure(1, KafkaError.NOT_LEADER_FOR_PARTITION), record(0, 1)],
            [record(1, 0), record(1, 1)],
        ]
    )
    batches = list(reader.read_partition_batches({0: (0, 2), 1: (0, 2)}))
    assert [(b.partitions, b.offsets) for b in batches] == [
        ([0], [0]),
        ([], []),
        ([0], [1]),
        ([1, 1], [0, 1]),
    ]
    assert any("code=_UNKNOWN_PARTITION" in r.getMessage() for r in caplog.records)


def test_a_permanent_read_error_raises_and_a_read_that_only_fails_stalls_out(monkeypatch):
    reader = fake_reader([[failure(0, KafkaError.TOPIC_AUTHORIZATION_FAILED)]])
    with pytest.raises(TopicError, match="Topic authorization failed"):
        list(reader.read_partition_batches({0: (0, 2)}))
    monkeypatch.setattr(reader_module, "WAIT_S", 0.05)
    reader = fake_reader([[failure(0, KafkaError.LEADER_NOT_AVAILABLE)]] * 100, seconds=0.01)
    with pytest.raises(TopicError, match=r"nothing read for 0 s from partitions \[0\], last error: .*Leader"):
        list(reader.read_partition_batches({0: (0, 2)}))
    assert reader._consumer.script, "given up long before the failures ran out"  # type: ignore[attr-defined]


def test_an_lru_miss_read_waits_out_a_transient_error():
    reader = fake_reader([[failure(0, KafkaError._UNKNOWN_PARTITION)], [record(0, 4), record(0, 5)]])
    found = reader.read_offsets({0: [5]})
    assert list(found) == [(0, 5)]
