"""At least once: predictions, then their events' states, then the input offsets past them,
each step only once the one before is acknowledged; pipelined so that the loop never waits for
more than what it produced since the last flush."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker.commit import CommitProtocol, Progress
from worker.kafka.output import OutputProducer
from worker.metrics import Metrics
from worker.state.store import StateStore
from worker.watchdog import guard

log = logging.getLogger(__name__)
_SYNC_COMMIT_LIMIT_S = 60.0  # a synchronous offset commit, which has no timeout of its own


class AtLeastOnce(CommitProtocol):
    """A commit point flushes (the predictions, and the states queued at the previous point),
    commits that point's offsets, then queues the dirty states: the loop produces them a slice per
    iteration, all within half the commit interval, and commits their offsets once they are all
    acknowledged, or the next commit point does. A state never gets ahead of its predictions, an
    offset never ahead of its states."""

    def __init__(
        self, producer: OutputProducer, store: StateStore, progress: Progress, metrics: Metrics, interval_s: float
    ) -> None:
        super().__init__(store, progress, metrics)
        self.producer = producer
        self._interval_s = interval_s
        self._in_flight = False
        self._pending: list[TopicPartition] = []  # committed once their states are acknowledged
        self._queued_at = 0.0  # when the last commit point queued its states

    def between_rounds(self) -> None:
        share = (time.monotonic() - self._queued_at) / (self._interval_s / 2)
        self.store.write_queued_share(self.producer, self.progress.state_topic, share)
        if self._pending and not self.store.queued and not self.store.cache.writing:
            self._commit_pending(wait=False)

    def make_room(self) -> None:
        self.producer.flush()
        if self.store.write_dirty(self.producer, self.progress.state_topic):
            self.producer.flush()

    def commit_point(self, wait: bool) -> None:
        topic = self.progress.state_topic
        self.store.write_queued(self.producer, topic)  # what is left of the previous point's states
        self.producer.flush()
        self._commit_pending(wait)
        self.store.queue_dirty(self.producer, topic)
        self._queued_at = time.monotonic()
        self._pending = self._offsets_to_commit()
        if wait:
            self.store.write_queued(self.producer, topic)
            self.producer.flush()
            self._commit_pending(wait)
        if self.store.write_tombstones(self.producer, topic, self.committed):
            self.producer.flush()

    def _offsets_to_commit(self) -> list[TopicPartition]:
        """Per partition, the lowest event not processed yet, where changed since the last commit."""
        topic = self.progress.input_topic
        return [
            TopicPartition(topic, p, offset)
            for p, offset in self.progress.positions().items()
            if self.committed.get(p) != offset
        ]

    def _commit_pending(self, wait: bool) -> None:
        """A periodic commit is asynchronous (a synchronous one stalls every partition for as long
        as a rebalance of the group lasts) and never piles up; a failed one is redone by the next
        commit point, which covers these offsets too."""
        if not self._pending or (self._in_flight and not wait):
            return
        offsets, self._pending = self._pending, []
        consumer = self._consumer()
        try:
            if wait:
                with guard("consumer.commit (synchronous)", _SYNC_COMMIT_LIMIT_S):
                    done = consumer.commit(offsets=offsets, asynchronous=False)
                self.on_commit(None, done or [])
            else:
                self._in_flight = True
                consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self._in_flight = False
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed (redone at the next commit point): %s", exc.args[0])

    def lost(self) -> None:
        """Nothing to undo: what was not committed is replayed by the partitions' new owner."""

    def failed(self) -> None:
        """Nothing to undo: offsets are committed only past acknowledged states."""

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Only confirmed offsets count, and only of partitions still assigned."""
        self._in_flight = False
        if error is not None:
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed (redone at the next commit point): %s", error)
            return
        assigned = self.progress.assigned()
        for tp in partitions:
            if tp.error is None and tp.topic == self.progress.input_topic and tp.partition in assigned:
                self.committed[tp.partition] = tp.offset
