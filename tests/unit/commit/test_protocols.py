"""The two commit protocols driven with fake clients, no broker: whatever the interleaving of
rounds, acknowledgements and commit results, a state record is produced only after the
predictions of its events are acknowledged, an input offset is committed only after the states
of the events below it are acknowledged, lost partitions produce and commit nothing, and a
failed commit is redone (at least once) or rolled back to committed state (exactly once)."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker.codec import decode_state
from worker.commit import CommitProtocol, Progress
from worker.commit.at_least_once import AtLeastOnce
from worker.commit.exactly_once import ExactlyOnce
from worker.errors import StuckClientError
from worker.metrics import Metrics
from worker.state.cache import EntityId, StateCache
from worker.state.store import StateStore

INPUT, OUTPUT, STATE = "events", "predictions", "events.state"
SIZES, MODEL = [2, 1], "model-a"
PARTITIONS = 3


@dataclass
class Sent:
    topic: str
    partition: int
    key: bytes
    value: bytes | None
    acked: bool = False
    offset: int = -1
    aborted: bool = False  # in a transaction that was aborted: never visible


class FakeProducer:
    """The OutputProducer calls the protocols and the store make. Records are acknowledged in
    produce order per partition (`ack`), all at `flush`; state records report back to the store.
    It checks, at each state record produced, that the predictions of its events are acknowledged."""

    def __init__(self, store: StateStore, transactional: bool = False) -> None:
        self.store = store
        self.transactional = transactional
        self.sent: list[Sent] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.carries_records = False
        self.fail_next_commit: Exception | None = None
        self.commits: list[list[TopicPartition]] = []
        self.began = 0
        self._open_from = 0  # the open transaction's first record in `sent`

    # -- producing
    def produce(self, topic: str, key: bytes | None, value: bytes | None, partition: int = -1, headers=None) -> None:
        assert key is not None and partition >= 0
        if topic == STATE and value is not None and not self.transactional:  # a transaction is atomic
            src = decode_state(value, SIZES).src_offset
            early = [s for s in self.predictions(partition) if prediction_offset(s) <= src and not s.acked]
            assert not early, f"state of {key!r} (src {src}) produced before its predictions were acknowledged"
        self.sent.append(Sent(topic, partition, key, value))
        self.carries_records = True

    def produce_many(self, topic: str, targets, values) -> None:
        for (partition, key), value in zip(targets, values, strict=True):
            self.produce(topic, key, value, partition)

    def predictions(self, partition: int) -> list[Sent]:
        return [s for s in self.sent if s.topic == OUTPUT and s.partition == partition and not s.aborted]

    def ack(self, rng: random.Random) -> None:
        """A random prefix of each partition's unacknowledged records (brokers ack in order)."""
        for topic, partition in {(s.topic, s.partition) for s in self.sent}:
            waiting = [s for s in self.sent if (s.topic, s.partition) == (topic, partition) and not s.acked | s.aborted]
            for s in waiting[: rng.randint(0, len(waiting))]:
                self._ack(s)

    def _ack(self, s: Sent) -> None:
        s.acked = True
        s.offset = self.offsets.get((s.topic, s.partition), 0)
        self.offsets[(s.topic, s.partition)] = s.offset + 1
        if s.topic == STATE:
            self.store.delivered(s.partition, s.key, s.offset, s.value is None)

    def flush(self) -> None:
        for s in self.sent:
            if not s.acked and not s.aborted:
                self._ack(s)

    def poll(self) -> None:
        pass

    # -- transactions
    def begin(self) -> None:
        self.began += 1
        self.carries_records = False
        self._open_from = len(self.sent)

    def commit(self, offsets: list[TopicPartition], group: object) -> None:
        if self.fail_next_commit is not None:
            failure, self.fail_next_commit = self.fail_next_commit, None
            raise failure
        self.flush()
        self.commits.append(offsets)

    def abort(self) -> None:
        for s in self.sent[self._open_from :]:
            s.aborted = True
        self.carries_records = False

    def abort_open(self, timeout_s: float) -> None:
        self.abort()


def prediction_offset(s: Sent) -> int:
    return int(s.value.decode().split(":")[1])  # type: ignore[union-attr]


@dataclass
class FakeConsumer:
    """The group consumer's commit calls; asynchronous results are reported when the test says.
    It checks, at each commit, every committed offset against what is acknowledged."""

    producer: Callable[[], FakeProducer]
    processed: Callable[[], list[tuple[int, int, bytes]]]
    protocol: CommitProtocol | None = None
    pending: list[list[TopicPartition]] = field(default_factory=list)
    committed_offsets: dict[int, int] = field(default_factory=dict)
    fail_next: bool = False

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition] | None:
        for tp in offsets:
            self.check(tp.partition, tp.offset)
        if asynchronous:
            self.pending.append(offsets)
            return None
        self.committed_offsets.update({tp.partition: tp.offset for tp in offsets})
        return offsets

    def report(self) -> None:
        """The asynchronous commits' results reach the protocol (the first fails if asked)."""
        assert self.protocol is not None
        for offsets in self.pending:
            if self.fail_next:
                self.fail_next = False
                self.protocol.on_commit(KafkaError(KafkaError.REQUEST_TIMED_OUT), offsets)
                continue
            self.committed_offsets.update({tp.partition: tp.offset for tp in offsets})
            self.protocol.on_commit(None, offsets)
        self.pending.clear()

    def check(self, partition: int, offset: int) -> None:
        """Every event below the offset: its prediction and a state at or past it acknowledged."""
        sent = [s for s in self.producer().sent if s.partition == partition and s.acked and not s.aborted]
        acked_predictions = {prediction_offset(s) for s in sent if s.topic == OUTPUT}
        states: dict[bytes, int] = {}
        for s in sent:
            if s.topic == STATE and s.value is not None:
                states[s.key] = max(states.get(s.key, -1), decode_state(s.value, SIZES).src_offset)
        for p, event, key in self.processed():
            if p == partition and event < offset:
                assert event in acked_predictions, f"offset {offset} of {p} committed before prediction {event}"
                assert states.get(key, -1) >= event, f"offset {offset} of {p} committed before the state of {event}"

    def consumer_group_metadata(self) -> object:
        return "group-metadata"


class Loop:
    """What `Worker` does around the protocol, reduced to state: rounds of events, positions,
    assignment, lost partitions."""

    def __init__(self, make: Callable[[Loop], CommitProtocol], cache_keys: int = 64) -> None:
        self.store = StateStore(StateCache(cache_keys, sum(SIZES)), None, SIZES, MODEL, Metrics())  # type: ignore[arg-type]
        self.assigned = set(range(PARTITIONS))
        self.next_offset: dict[int, int] = {}
        self.processed: list[tuple[int, int, bytes]] = []
        self.rewinds: list[set[int]] = []
        self.producers: list[FakeProducer] = []
        self.progress = Progress(INPUT, STATE, self.positions, lambda: self.assigned)
        self.protocol = make(self)
        self.consumer = FakeConsumer(lambda: self.protocol.producer, lambda: self.processed)  # type: ignore[arg-type,return-value]
        self.consumer.protocol = self.protocol
        self.protocol.consumer = self.consumer  # type: ignore[assignment]

    def new_producer(self, transactional: bool = False) -> FakeProducer:
        producer = FakeProducer(self.store, transactional)
        producer.begin()
        self.producers.append(producer)
        return producer

    def positions(self) -> dict[int, int]:
        return {p: offset for p, offset in self.next_offset.items() if p in self.assigned}

    def round(self, events: list[tuple[int, bytes]]) -> None:
        """One event per key: the cache rows resolved, settled, stepped, predictions produced."""
        producer = self.protocol.producer
        ids: list[EntityId] = [(p, key) for p, key in events]
        rows = self.store.resolve(ids)
        self.store.settle(producer, STATE, rows)  # type: ignore[arg-type]
        cache = self.store.cache
        for (p, key), row in zip(events, rows.tolist(), strict=True):
            offset = self.next_offset.get(p, 0)
            self.next_offset[p] = offset + 1
            cache.states[row] = offset
            cache.step[row] += 1
            cache.src[row] = offset
            self.processed.append((p, offset, key))
            producer.produce(OUTPUT, key, f"{p}:{offset}".encode(), p)

    def lose(self, partition: int) -> None:
        """The worker's `_on_lost`: forget the partition, then tell the protocol."""
        self.assigned.discard(partition)
        self.store.forget(partition)
        self.next_offset.pop(partition, None)
        self.protocol.forget({partition})
        self.protocol.lost()


def at_least_once(loop: Loop, interval_s: float = 1.0) -> CommitProtocol:
    return AtLeastOnce(loop.new_producer(), loop.store, loop.progress, Metrics(), interval_s)  # type: ignore[arg-type]


def exactly_once(loop: Loop) -> CommitProtocol:
    return ExactlyOnce(lambda: loop.new_producer(True), loop.store, loop.progress, Metrics(), loop.rewinds.append)  # type: ignore[arg-type,return-value]


def random_events(rng: random.Random) -> list[tuple[int, bytes]]:
    keys = rng.sample([(p, b"k%d" % k) for p in range(PARTITIONS) for k in range(6)], rng.randint(1, 8))
    return keys


@pytest.mark.parametrize("seed", range(20))
def test_at_least_once_orders_predictions_states_offsets_under_any_interleaving(seed):
    rng = random.Random(seed)
    loop = Loop(at_least_once)
    producer = loop.protocol.producer
    for _ in range(60):
        loop.round(random_events(rng))
        producer.ack(rng)  # type: ignore[attr-defined]
        loop.protocol.between_rounds()
        if rng.random() < 0.2:
            loop.consumer.fail_next = rng.random() < 0.3
            loop.consumer.report()
        if rng.random() < 0.15:
            loop.protocol.commit_point(wait=False)
    loop.consumer.report()
    loop.protocol.commit_point(wait=True)
    assert loop.consumer.committed_offsets == loop.positions(), "a shutdown commits every processed event"
    assert loop.protocol.committed == loop.positions()


def test_at_least_once_redoes_a_failed_commit_at_the_next_commit_point():
    loop = Loop(functools.partial(at_least_once, interval_s=1e-9))  # every queued state due at once
    loop.round([(0, b"a"), (1, b"b")])
    loop.protocol.commit_point(wait=False)  # flush, then queue the states
    loop.protocol.between_rounds()  # the states produced
    assert not loop.consumer.pending, "offsets before their states are acknowledged"
    loop.protocol.producer.flush()
    loop.protocol.between_rounds()  # the states acknowledged: the offsets go
    assert loop.consumer.pending == [[TopicPartition(INPUT, 0, 1), TopicPartition(INPUT, 1, 1)]]
    loop.consumer.fail_next = True
    loop.consumer.report()
    assert loop.protocol.committed == {}, "a failed commit confirms nothing"
    loop.protocol.commit_point(wait=True)
    assert loop.consumer.committed_offsets == {0: 1, 1: 1} and loop.protocol.committed == {0: 1, 1: 1}


@pytest.mark.parametrize("make", [at_least_once, exactly_once])
def test_a_lost_partition_produces_and_commits_nothing_more(make):
    loop = Loop(make)
    loop.round([(0, b"a"), (1, b"b"), (1, b"c")])
    before = len(loop.protocol.producer.sent)  # type: ignore[attr-defined]
    loop.lose(1)
    loop.protocol.commit_point(wait=True)
    sent = loop.protocol.producer.sent  # type: ignore[attr-defined]
    assert all(s.partition != 1 for s in sent[before:]), "a lost partition's state was written"
    if make is exactly_once:  # its outputs so far were in the open transaction: aborted
        assert all(s.aborted for s in sent[:before]) and loop.rewinds == [{0, 2}]
    committed = loop.consumer.committed_offsets if make is at_least_once else dict(loop.protocol.committed)
    assert 1 not in committed and committed.get(0) == 1


def test_exactly_once_commits_states_and_offsets_in_one_transaction_and_rolls_back_a_failure():
    loop = Loop(exactly_once)
    producer = loop.protocol.producer
    loop.round([(0, b"a"), (1, b"b")])
    loop.protocol.commit_point(wait=False)
    assert producer.commits == [[TopicPartition(INPUT, 0, 1), TopicPartition(INPUT, 1, 1)]]  # type: ignore[attr-defined]
    assert {(s.topic, s.partition) for s in producer.sent} >= {(STATE, 0), (STATE, 1)}  # type: ignore[attr-defined]
    assert loop.protocol.committed == {0: 1, 1: 1} and producer.began == 2  # type: ignore[attr-defined]

    loop.round([(0, b"a")])
    producer.fail_next_commit = KafkaException(KafkaError(KafkaError._TIMED_OUT, "abortable"))  # type: ignore[attr-defined]
    loop.protocol.commit_point(wait=False)
    assert loop.protocol.committed == {0: 1, 1: 1}, "an aborted transaction commits no offset"
    assert loop.rewinds == [{0, 1, 2}], "every assigned partition restored from committed state"
    assert loop.protocol.producer is producer and producer.began == 3, "the same producer, a new transaction"  # type: ignore[attr-defined]


def test_exactly_once_replaces_a_producer_stuck_in_its_commit():
    loop = Loop(exactly_once)
    stuck = loop.protocol.producer
    loop.round([(2, b"z")])
    stuck.fail_next_commit = StuckClientError("producer.send_offsets_to_transaction did not return")  # type: ignore[attr-defined]
    loop.protocol.commit_point(wait=False)
    assert loop.protocol.producer is not stuck and len(loop.producers) == 2, "a new producer fences the stuck one"
    assert loop.rewinds == [{0, 1, 2}] and loop.protocol.committed == {}


def test_exactly_once_waits_for_stable_offsets_before_a_restore_and_at_least_once_does_not():
    assert Loop(at_least_once).protocol.stable_offsets is None
    loop = Loop(exactly_once)
    asked: list[tuple[list[TopicPartition], float]] = []
    loop.consumer.committed = lambda partitions, timeout: asked.append((partitions, timeout)) or partitions  # type: ignore[attr-defined]
    assert loop.protocol.stable_offsets is not None
    loop.protocol.stable_offsets([1, 2], 5.0)
    assert asked == [([TopicPartition(INPUT, 1), TopicPartition(INPUT, 2)], 5.0)]


def test_exactly_once_makes_room_by_committing():
    """Making room commits the transaction: evicted states can then be read back committed."""
    loop = Loop(exactly_once, cache_keys=4)
    loop.round([(0, b"a"), (0, b"b"), (1, b"c"), (1, b"d")])
    assert loop.store.cache.room() == 0
    loop.protocol.make_room()
    assert loop.store.cache.room() == 4 and loop.protocol.committed == {0: 2, 1: 2}
    last = loop.protocol.producer.commits[-1]  # type: ignore[attr-defined]
    assert {(tp.partition, tp.offset) for tp in last} == {(0, 2), (1, 2)}
