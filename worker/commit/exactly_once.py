"""Exactly once: predictions, dead letters, states and input offsets in one transaction
(exactly_once_v2, KIP-447), so that they become visible together or not at all."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from worker.commit import CommitProtocol, Progress
from worker.errors import KafkaDeliveryError, StuckClientError
from worker.kafka.output import OutputProducer
from worker.metrics import Metrics
from worker.state.store import StateStore
from worker.watchdog import MARGIN_S, guard

log = logging.getLogger(__name__)
_ABORT_ON_FAILURE_S = 10.0  # the best-effort abort of the open transaction on the way out after a failure


def transaction_offsets(
    positions: Mapping[int, int], committed: Mapping[int, int], carries_records: bool
) -> dict[int, int]:
    """The input offsets a transaction sends, per assigned partition: `positions` (the lowest
    event not processed yet, where known) that differ from `committed`; and when the transaction
    carries any record, every partition with a known position, changed or not. Sending offsets is
    what makes the group coordinator check the member's generation (KIP-447): without them a
    member that lost its partitions could still commit states, tombstones or dead letters for
    them. A transaction with no record and no changed offset has nothing to fence."""
    if carries_records:
        return {**committed, **positions}
    return {p: offset for p, offset in positions.items() if committed.get(p) != offset}


class ExactlyOnce(CommitProtocol):
    """A transaction is always open. A commit point writes the dirty states into it, sends the
    input offsets and commits; a failed commit aborts, and `rewind` sends every assigned partition
    back to its committed offsets and committed state: state of an aborted transaction is never
    reused. `new_producer` makes a transactional producer with a transaction open; a new one
    fences the one before (same transactional.id)."""

    def __init__(
        self,
        new_producer: Callable[[], OutputProducer],
        store: StateStore,
        progress: Progress,
        metrics: Metrics,
        rewind: Callable[[set[int]], None],
    ) -> None:
        super().__init__(store, progress, metrics)
        self._new_producer = new_producer
        self._rewind = rewind
        self.producer = new_producer()
        self.stable_offsets = self._stable_offsets

    def between_rounds(self) -> None:
        """Everything waits for the commit point's transaction."""

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Offsets are committed with the transaction, not by the consumer."""

    def make_room(self) -> None:
        """Written states must be committed before they can be evicted and read back."""
        self.commit_point(wait=True)

    def commit_point(self, wait: bool) -> None:
        topic = self.progress.state_topic
        self.store.write_dirty(self.producer, topic)
        sent = transaction_offsets(self.progress.positions(), self.committed, self.producer.carries_records)
        offsets = [TopicPartition(self.progress.input_topic, p, offset) for p, offset in sent.items()]
        try:
            self.producer.commit(offsets, self._consumer().consumer_group_metadata())
        except StuckClientError as exc:  # the transaction's outcome is whatever fencing the producer decides
            self.metrics.commit_failures.inc()
            self._abort(str(exc), replace=True)
            return
        except (KafkaException, KafkaDeliveryError) as exc:
            self.metrics.commit_failures.inc()
            self._abort(str(exc))
            if isinstance(exc, KafkaDeliveryError) and exc.permanent:
                raise  # replaying would fail the same way: stop, nothing of it committed
            return
        self.committed.update({tp.partition: tp.offset for tp in offsets})
        self.producer.begin()
        self.store.write_tombstones(self.producer, topic, self.committed)  # in the next transaction

    def lost(self) -> None:
        """The open transaction holds outputs of the lost partitions: none of it may commit."""
        self._abort("partitions lost")

    def failed(self) -> None:
        """read_committed readers would otherwise wait for the transaction's timeout."""
        self.producer.abort_open(_ABORT_ON_FAILURE_S)

    def _abort(self, reason: str, replace: bool = False) -> None:
        """Drop the transaction and restore every assigned partition from what was committed.
        `replace`: the producer is stuck in a call; a new one with its transactional.id fences
        it, which completes or aborts its transaction, and the restore waits for that outcome."""
        assigned = self.progress.assigned()
        log.error("transaction aborted (%s): restoring partitions=%s from committed state", reason, sorted(assigned))
        self.metrics.transaction_aborts.inc()
        if not replace:
            try:
                self.producer.abort()
                self.producer.begin()
            except KafkaException as exc:  # fenced or otherwise unusable
                reason, replace = str(exc.args[0]), True
        if replace:
            log.error("transactional producer replaced: %s", reason)
            self.producer = self._new_producer()
        self._rewind(assigned)

    def _stable_offsets(self, partitions: list[int], timeout_s: float) -> None:
        """The group's committed offsets of the partitions, asked until stable: a read_committed
        consumer's offset fetch waits while a transaction holding offsets for them is undecided."""
        topic = self.progress.input_topic
        with guard("consumer.committed", timeout_s + MARGIN_S):
            self._consumer().committed([TopicPartition(topic, p) for p in partitions], timeout_s)
