"""The worker's producer of predictions, states and dead letters.

Delivery errors are latched in the callback and raised on the main thread at the next
flush (never swallowed), so offsets are only ever committed after the outputs they
cover are durable. State-topic deliveries report their offsets back to the state index.

At least once it is two clients: the state topic's records on one that reports every
delivery, everything else on one that reports failures only
(`delivery.report.only.error`). A report is a Python call per record on the loop's thread
(docs/performance.md, "Delivery reports"). Exactly once it is one transactional client: a
transaction belongs to one producer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from worker.errors import KafkaDeliveryError, StuckClientError
from worker.watchdog import MARGIN_S, guard

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

# what an aborted transaction's records report: the worker purges nothing itself otherwise
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})

StateDelivered = Callable[[int, bytes, int, bool], None]  # partition, key, offset, tombstone
_TRANSACTION_TIMEOUT_MS = 60000  # librdkafka's default transaction.timeout.ms


def _on_own_thread(name: str, limit_s: float, call: Callable[[], object]) -> None:
    """Runs `call` on a thread of its own for at most `limit_s`: past it the call is left to that
    thread and StuckClientError raised, so that the caller can replace the client rather than the
    process (librdkafka's transaction calls can block past their own timeout: #5456, #5511)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the caller's thread
            raised.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        raise StuckClientError(f"{name} did not return within {limit_s:g} s")
    if raised:
        raise raised[0]


class OutputProducer:
    """Idempotent producer; `flush` waits out broker outages and raises latched failures."""

    def __init__(
        self,
        settings: dict[str, Any],
        state_topic: str | None = None,
        on_state_delivered: StateDelivered | None = None,
        state_settings: dict[str, Any] | None = None,
    ) -> None:
        """`state_settings`: the state records' client's, when not `settings` (never transactional: one client)."""
        self._state_topic = state_topic
        self._on_state_delivered = on_state_delivered
        self._failure: KafkaDeliveryError | None = None
        self._in_transaction = False
        self._records = False  # produced anything since `begin`
        # past transaction.timeout.ms its coordinator aborts the transaction: retrying longer is futile
        self._retry_for_s = float(settings.get("transaction.timeout.ms", _TRANSACTION_TIMEOUT_MS)) / 1000
        # the state index needs every state delivery's offset, whatever -X says
        reporting = state_settings if state_settings is not None and "transactional.id" not in settings else settings
        self._producer = Producer({**reporting, "on_delivery": self._delivered, "delivery.report.only.error": False})
        self._quiet = self._producer
        if "transactional.id" not in settings:
            self._quiet = Producer({**settings, "on_delivery": self._delivered, "delivery.report.only.error": True})
        self._clients = [self._quiet] if self._quiet is self._producer else [self._quiet, self._producer]

    def _client(self, topic: str) -> Producer:
        """The state topic's records on the reporting client, the others on the quiet one."""
        return self._producer if topic == self._state_topic else self._quiet

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            if err.code() in _PURGED:  # dropped by an abort of the worker's own: replayed, not failed
                return
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
        self._records = True
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
        self._records = self._records or n > 0
        while i < n:
            try:
                while i < n:
                    partition, key = targets[i]
                    send(topic, values[i], key, partition)  # positional: cheaper than by keyword
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
        """Block until every produced record is acknowledged, however long the broker is away
        (a shutdown is bounded by its deadline, not here)."""
        started = time.monotonic()
        warn_at = started + 10
        while (remaining := self._flush_once()) > 0:
            self._raise_failure()
            if (now := time.monotonic()) >= warn_at:
                log.warning("waiting for the broker: unacknowledged=%d waited_s=%d", remaining, now - started)
                warn_at = now + 10
        self._raise_failure()

    def _flush_once(self) -> int:
        """One second of flushing, shared by the clients; how many records are still unacknowledged."""
        timeout_s = 1.0 / len(self._clients)
        remaining = 0
        for client in self._clients:
            with guard("producer.flush", timeout_s + MARGIN_S):
                remaining += client.flush(timeout_s)
        return remaining

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
        self._retrying("init_transactions", 30.0, self._producer.init_transactions)

    def begin(self) -> None:
        self._producer.begin_transaction()
        self._in_transaction, self._records = True, False

    @property
    def carries_records(self) -> bool:
        """Whether anything was produced since `begin` (the open transaction is not empty)."""
        return self._records

    def commit(self, offsets: list[TopicPartition], group: object) -> None:
        """Outputs and input offsets become visible together, or not at all.

        Raises the KafkaException of a failure that needs an abort (or is fatal), StuckClientError
        when a call did not return (the producer must be replaced).
        """
        if offsets:
            send = self._producer.send_offsets_to_transaction
            self._retrying(
                "send_offsets_to_transaction", 30.0, lambda timeout_s: send(offsets, group, timeout_s), replaceable=True
            )
        self._retrying("commit_transaction", 60.0, self._producer.commit_transaction, replaceable=True)
        self._in_transaction = False
        self._raise_failure()

    def abort(self) -> None:
        self._retrying("abort_transaction", 60.0, self._producer.abort_transaction)
        self._producer.poll(0)  # the aborted records' reports, before what failed is cleared
        self._failure = None  # what failed is aborted with the rest
        self._in_transaction = False

    def abort_open(self, timeout_s: float) -> None:
        """On the way out after a failure: abort the open transaction, if any, at once rather than
        leave read_committed readers waiting for its timeout. Best effort: one bounded try."""
        if not self._in_transaction:
            return
        self._failure = None
        try:
            with guard("producer.abort_transaction", timeout_s + MARGIN_S):
                self._producer.abort_transaction(timeout_s)
        except KafkaException as exc:
            log.error("the open transaction could not be aborted (its coordinator aborts it at its timeout): %s", exc)
            return
        self._in_transaction = False
        log.info("open transaction aborted")

    def _retrying(
        self, name: str, timeout_s: float, call: Callable[[float], object], replaceable: bool = False
    ) -> None:
        """Retriable transaction errors (a broker away) are retried for as long as the transaction
        could live: past that its coordinator has aborted it, and the last error is raised for the
        caller to abort (or, at init, to stop). Each try is bounded, since librdkafka may overrun
        it: `replaceable`, by StuckClientError for the caller to replace this producer (a new one
        with the same transactional.id fences it); else by the watchdog, which exits."""
        started = time.monotonic()
        while True:
            try:
                if replaceable:
                    _on_own_thread(f"producer.{name}", timeout_s + MARGIN_S, lambda: call(timeout_s))
                else:
                    with guard(f"producer.{name}", timeout_s + MARGIN_S):
                        call(timeout_s)
                return
            except KafkaException as exc:
                error, waited = exc.args[0], time.monotonic() - started
                if not error.retriable():
                    raise
                if waited >= self._retry_for_s:
                    log.error("producer.%s gave up after %.0f s of retriable errors: %s", name, waited, error)
                    raise
                log.warning("transaction call %s will be retried: %s", name, error)
                time.sleep(1.0)
