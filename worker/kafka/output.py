"""The worker's producer of predictions, states and dead letters.

Delivery errors are latched in the callback and raised on the main thread at the next
flush (never swallowed), so offsets are only ever committed after the outputs they
cover are durable. State-topic deliveries report their offsets back to the state index.

At least once it is two clients: the state topic's records on one that reports every
delivery, everything else on one that reports failures only
(`delivery.report.only.error`). A report is a Python call on the loop's thread, and the
predictions' reports were ~1 us per event that said nothing. Exactly once it is one
transactional client: a transaction belongs to one producer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from worker.errors import KafkaDeliveryError

log = logging.getLogger(__name__)


def position(msg: Message) -> tuple[int, int]:
    """Partition and offset of a consumed or delivered record (never None for those)."""
    return cast(int, msg.partition()), cast(int, msg.offset())


# Delivery errors that retrying the same record cannot cure (librdkafka retries the others
# by itself: without limit in at-least-once mode, until the transaction times out otherwise).
_PERMANENT = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.POLICY_VIOLATION,
    }
)

StateDelivered = Callable[[int, bytes, int, bool], None]  # partition, key, offset, tombstone


class OutputProducer:
    """Idempotent producer; `flush` waits out broker outages and raises latched failures."""

    def __init__(
        self, settings: dict[str, Any], state_topic: str | None = None, on_state_delivered: StateDelivered | None = None
    ) -> None:
        self._state_topic = state_topic
        self._on_state_delivered = on_state_delivered
        self._failure: KafkaDeliveryError | None = None
        # the state index needs every state delivery's offset, whatever -X says
        self._producer = Producer({**settings, "on_delivery": self._delivered, "delivery.report.only.error": False})
        self._quiet = self._producer
        if "transactional.id" not in settings:
            self._quiet = Producer({**settings, "on_delivery": self._delivered, "delivery.report.only.error": True})
        self._clients = [self._quiet] if self._quiet is self._producer else [self._quiet, self._producer]

    def _client(self, topic: str) -> Producer:
        """The state topic's records on the reporting client, the others on the quiet one."""
        return self._producer if topic == self._state_topic else self._quiet

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            if self._failure is None or (not self._failure.permanent and err.code() in _PERMANENT):
                self._failure = KafkaDeliveryError(msg.topic() or "?", err, permanent=err.code() in _PERMANENT)
            return
        if self._on_state_delivered is not None and msg.topic() == self._state_topic:
            partition, offset = position(msg)
            self._on_state_delivered(partition, msg.key() or b"", offset, msg.value() is None)

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int = -1,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        """Partition -1 leaves the choice to the partitioner (by key)."""
        client = self._client(topic)
        while True:
            try:
                client.produce(topic, value, key, partition=partition, headers=headers)
                return
            except BufferError:  # local queue full: let deliveries drain it
                client.poll(0.05)
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() == KafkaError._STATE:  # the open transaction failed: the reports say why
                    client.poll(0)
                    self._failure = self._failure or KafkaDeliveryError(topic, error)
                    if not self._failure.permanent:
                        return  # the commit aborts the transaction and its records are replayed
                else:  # refused before sending (larger than message.max.bytes, say)
                    self._failure = KafkaDeliveryError(topic, error, permanent=error.code() in _PERMANENT)
                raise self._failure from exc

    def produce_many(self, topic: str, targets: Sequence[tuple[int, bytes]], values: Sequence[bytes]) -> None:
        """Records in order, each to its (partition, key): the client called directly, and
        `produce` only for a record that meets a full queue or an error."""
        send, i, n = self._client(topic).produce, 0, len(values)
        while i < n:
            try:
                while i < n:
                    partition, key = targets[i]
                    send(topic, values[i], key, partition)  # positional: ~0.4 us less than by keyword
                    i += 1
            except (BufferError, KafkaException):
                partition, key = targets[i]
                self.produce(topic, key, values[i], partition)
                i += 1

    def poll(self) -> None:
        """Serve delivery callbacks without blocking; a permanent failure stops the caller at
        once, other failures surface at the next flush or transaction commit."""
        for client in self._clients:
            client.poll(0)
        if self._failure is not None and self._failure.permanent:
            raise self._failure

    def flush(self) -> None:
        """Block until every produced record is acknowledged, however long the broker is away."""
        waited = 0
        while (remaining := sum(client.flush(1.0 / len(self._clients)) for client in self._clients)) > 0:
            self._raise_failure()
            waited += 1
            if waited % 10 == 0:
                log.warning("waiting for the broker: unacknowledged=%d waited_s=%d", remaining, waited)
        self._raise_failure()

    def _raise_failure(self) -> None:
        """A permanent failure stays latched: no later flush may pass as if it had not happened."""
        if self._failure is not None:
            failure = self._failure
            if not failure.permanent:
                self._failure = None
            raise failure

    # -- transactions (processing_guarantee=exactly_once_v2) ---------------------------

    def init_transactions(self) -> None:
        """Fence older producers of this transactional.id; needed once before `begin`."""
        self._retrying(lambda: self._producer.init_transactions(30.0))

    def begin(self) -> None:
        self._producer.begin_transaction()

    def commit(self, offsets: list[TopicPartition], group: object) -> None:
        """Outputs and input offsets become visible together, or not at all.

        Raises the KafkaException of a failure that needs an abort (or is fatal).
        """
        if offsets:
            self._retrying(lambda: self._producer.send_offsets_to_transaction(offsets, group, 30.0))
        self._retrying(lambda: self._producer.commit_transaction(60.0))
        self._raise_failure()

    def abort(self) -> None:
        self._failure = None  # what failed is aborted with the rest
        self._retrying(lambda: self._producer.abort_transaction(60.0))

    def _retrying(self, call: Callable[[], object]) -> None:
        """Retriable transaction errors (a broker away) are waited out."""
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                if not exc.args[0].retriable():
                    raise
                log.warning("transaction call will be retried: %s", exc.args[0])
                time.sleep(1.0)
