"""Reads a topic by hand: whole partitions (state restore, verify), records by offset (LRU misses).

A consumer of its own with manual assignment (no group), so reading state never
disturbs the group member's assignment or position. Errors librdkafka recovers from (a leader
moving, a broker restarting, metadata settling after a rebalance) are waited out within WAIT_S.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from worker.errors import TopicError

log = logging.getLogger(__name__)

Record = tuple[int, int, bytes, bytes | None]  # partition, offset, key, value (None: tombstone)


@dataclass(slots=True)
class Records:
    """A consume() batch as columns (record i is item i of each list): each field read for the
    whole batch with one `map` (docs/performance.md, "Restore batches")."""

    partitions: list[int]
    offsets: list[int]
    keys: list[bytes]
    values: list[bytes | None]  # None: a tombstone

    def __len__(self) -> int:
        return len(self.offsets)

    def rows(self) -> Iterator[Record]:
        return zip(self.partitions, self.offsets, self.keys, self.values, strict=True)

    def take(self, index: list[int]) -> Records:
        """These records, in this order."""
        partitions, offsets, keys, values = self.partitions, self.offsets, self.keys, self.values
        return Records(
            [partitions[i] for i in index],
            [offsets[i] for i in index],
            [keys[i] for i in index],
            [values[i] for i in index],
        )

    @staticmethod
    def of(msgs: list[Message]) -> Records:
        return Records(
            list(map(Message.partition, msgs)),  # type: ignore[arg-type]
            list(map(Message.offset, msgs)),  # type: ignore[arg-type]
            list(map(Message.key, msgs)),  # type: ignore[arg-type]
            list(map(Message.value, msgs)),
        )


_SEEK_GAP = 2000  # re-position rather than read through more records than this
# how long transient errors and reads that bring nothing are waited out before a TopicError: a
# few leader elections' worth, inside max.poll.interval.ms (300 s) for the blocking LRU-miss read
WAIT_S = 180.0
WATERMARK_TIMEOUT_S = 5.0  # one attempt: the restore's attempts block the worker loop
_REFRESH_TIMEOUT_S = 2.0
_WARN_EVERY_S = 5.0
_CHECK = (
    "check that the brokers are up and reachable and that every partition of the topic has a leader "
    "(kafka-topics.sh --describe --topic ...; a topic deleted meanwhile must be recreated)"
)
_CHECK_ACCESS = "check that the topic exists and that the worker's principal may READ and DESCRIBE it"

# Errors of a topic that exists, which librdkafka recovers from by itself once the cluster's
# metadata settles. The reader's topic existed when it was made (the worker checks its topics at
# start, verify the input's partitions), so an unknown topic or partition is metadata in flux too.
_TRANSIENT = frozenset(
    {
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._WAIT_COORD,
    }
)


def transient(error: KafkaError) -> bool:
    """Whether a read of an existing topic that failed with `error` may succeed if tried again."""
    return not error.fatal() and (error.code() in _TRANSIENT or error.retriable())


@dataclass
class Backoff:
    """Transient errors waited out: attempts spaced out (doubling up to `max_s`), a warning every
    `warn_s` at most, a TopicError for any other error or once `bound_s` has passed since the first."""

    topic: str
    what: str  # what is being read, for the messages: "watermarks of partitions [0, 1]"
    bound_s: float = WAIT_S
    first_s: float = 0.1
    max_s: float = 5.0
    warn_s: float = _WARN_EVERY_S
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    since: float | None = None  # the first failure since the last success
    failures: int = 0
    delay: float = 0.0
    next_at: float = field(default=float("-inf"))
    _warned_at: float = field(default=float("-inf"), init=False, repr=False)

    def due(self) -> bool:
        """Whether the next attempt may be made now."""
        return self.clock() >= self.next_at

    def wait(self, at_most: float) -> bool:
        """Sleeps until the next attempt is due, for `at_most` seconds at most; whether it is due."""
        left = self.next_at - self.clock()
        if left > 0:
            self.sleep(min(left, at_most))
        return left <= at_most

    def failed(self, error: KafkaError) -> float:
        """Schedule the next attempt after `error`: returns the seconds until it, or raises."""
        now = self.clock()
        if self.since is None:
            self.since = now
        self.failures += 1
        waited = now - self.since
        if not transient(error):
            raise TopicError(f"reading {self.what} of topic {self.topic!r} failed: {error.str()}; {_CHECK_ACCESS}")
        if waited >= self.bound_s:
            raise TopicError(
                f"reading {self.what} of topic {self.topic!r} still failed after {waited:.0f} s "
                f"({self.failures} attempts), last with: {error.str()}; {_CHECK}"
            )
        self.delay = min(self.max_s, max(self.first_s, 2 * self.delay))
        self.next_at = now + self.delay
        if now - self._warned_at >= self.warn_s:
            self._warned_at = now
            log.warning(
                "waiting out a transient error topic=%s reading=%r error=%s code=%s attempts=%d waited_s=%.1f "
                "retry_in_s=%.1f give_up_after_s=%.0f",
                self.topic,
                self.what,
                error.str(),
                error.name(),
                self.failures,
                waited,
                self.delay,
                self.bound_s,
            )
        return self.delay

    def succeeded(self) -> None:
        if self.since is not None:
            log.info(
                "recovered topic=%s reading=%r attempts=%d waited_s=%.1f",
                self.topic,
                self.what,
                self.failures,
                self.clock() - self.since,
            )
        self.since, self.failures, self.delay, self.next_at = None, 0, 0.0, float("-inf")


def _progress(msgs: list[Message]) -> bool:
    """Whether a consume() batch brought a record or an end of partition, not only errors."""
    return any((error := m.error()) is None or error.code() == KafkaError._PARTITION_EOF for m in msgs)


class TopicReader:
    """Reads `topic`, which existed when the reader was made (its callers check)."""

    def __init__(self, settings: dict[str, Any], topic: str) -> None:
        self.topic = topic
        self._consumer = Consumer({**settings, "enable.partition.eof": True})
        self._last_error: KafkaError | None = None  # the last transient consume error, for the stall's message
        self._warned_at = float("-inf")

    def close(self) -> None:
        self._consumer.close()

    def watermarks(self, partition: int, timeout: float = WATERMARK_TIMEOUT_S) -> tuple[int, int]:
        """(low, high) watermarks of one partition, asked once: raises KafkaException."""
        low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=timeout)
        return low, high

    def refresh(self, timeout: float = _REFRESH_TIMEOUT_S) -> None:
        """Asks the topic's metadata now, before trying again: librdkafka answers a partition missing
        from its metadata with _UNKNOWN_PARTITION, at once, until its periodic refresh (5 min)."""
        try:
            self._consumer.list_topics(self.topic, timeout=timeout)
        except KafkaException as exc:  # the attempt that follows says what fails
            log.debug("metadata refresh failed topic=%s: %s", self.topic, exc.args[0])

    def end_offsets(self, partitions: list[int]) -> dict[int, tuple[int, int]]:
        """(low, high) watermarks of the partitions holding records; transient errors are waited
        out here, blocking (a restore, which must not block the loop, asks `watermarks` itself)."""
        ends = {}
        backoff = Backoff(self.topic, f"watermarks of partitions {sorted(partitions)}")
        for p in partitions:
            while True:
                try:
                    low, high = self.watermarks(p)
                    break
                except KafkaException as exc:
                    backoff.sleep(backoff.failed(exc.args[0]))
                    self.refresh()
            if high > low:
                ends[p] = (low, high)
        backoff.succeeded()
        return ends

    def _batches(self, waiting: dict[int, Any], idle: bool = False) -> Iterator[list[Any]]:
        """consume() batches while anything is awaited (`idle`: an empty one too when a consume
        brings nothing, so that the caller gets control back); fails loudly once nothing but
        transient errors has arrived for WAIT_S."""
        self._last_error = None
        last_progress = time.monotonic()
        while waiting:
            msgs = self._consumer.consume(num_messages=2000, timeout=0.5)
            if msgs and _progress(msgs):
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > WAIT_S:
                last = f", last error: {self._last_error.str()}" if self._last_error is not None else ""
                raise TopicError(
                    f"topic {self.topic!r}: nothing read for {WAIT_S:.0f} s from partitions "
                    f"{sorted(waiting)}{last}; {_CHECK}"
                )
            if msgs or idle:
                yield msgs

    def read_partitions(self, partitions: list[int]) -> Iterator[Record]:
        """Every record of the partitions, from the beginning to the end as of this call."""
        for batch in self.read_partition_batches(self.end_offsets(partitions)):
            yield from batch.rows()

    def read_partition_batches(self, offsets: dict[int, tuple[int, int]]) -> Iterator[Records]:
        """The records from each partition's low to its high watermark (`end_offsets`), a
        consume() batch at a time (the restore decodes a batch together). An empty batch: nothing
        arrived for a moment (the restore returns to the worker loop meanwhile)."""
        ends = {p: high for p, (_, high) in offsets.items()}
        self._consumer.assign([TopicPartition(self.topic, p, low) for p, (low, _) in offsets.items()])
        for msgs in self._batches(ends, idle=True):
            if not msgs:
                yield Records([], [], [], [])
                continue
            batch = Records.of(msgs)
            last = dict(zip(batch.partitions, batch.offsets, strict=True))  # a partition's come in order
            if any(map(Message.error, msgs)) or not all(p in ends and offset < ends[p] for p, offset in last.items()):
                batch = self._within_ends(msgs, batch, ends)
            else:
                for p, offset in last.items():
                    if offset >= ends[p] - 1:
                        del ends[p]
            if len(batch):
                yield batch
        self._consumer.unassign()

    def _within_ends(self, msgs: list[Message], batch: Records, ends: dict[int, int]) -> Records:
        """The batch's records below their partition's end; partitions at their end are done."""
        kept = []
        for i, (m, p, offset) in enumerate(zip(msgs, batch.partitions, batch.offsets, strict=True)):
            error = m.error()
            if error is not None:
                if self._check(error):  # else transient: the partition is still awaited
                    ends.pop(p, None)
                continue
            if p not in ends:
                continue
            kept.append(i)
            if offset >= ends[p] - 1:
                del ends[p]
        return batch.take(kept)

    def read_offsets(self, wanted: dict[int, list[int]]) -> dict[tuple[int, int], Record]:
        """The records at these offsets (a missing one is left out), read together."""
        queues = {p: deque(sorted(set(offs))) for p, offs in wanted.items() if offs}
        found: dict[tuple[int, int], Record] = {}
        self._assign_next(queues)
        for msgs in self._batches(queues):
            reposition = False
            for m in msgs:
                p = m.partition()
                queue = queues.get(p)
                if queue is None:
                    continue
                if m.error() is not None:
                    if self._check(m.error()):  # past the end: the records left are missing
                        del queues[p]
                    continue
                offset = m.offset()
                while queue and queue[0] < offset:
                    log.warning("record missing topic=%s partition=%d offset=%d", self.topic, p, queue.popleft())
                if queue and queue[0] == offset:
                    queue.popleft()
                    found[(p, offset)] = (p, offset, m.key(), m.value())
                if not queue:
                    del queues[p]
                elif queue[0] - offset > _SEEK_GAP:
                    reposition = True
            if reposition:
                self._assign_next(queues)
        self._consumer.unassign()
        return found

    def _assign_next(self, queues: dict[int, deque[int]]) -> None:
        self._consumer.assign([TopicPartition(self.topic, p, q[0]) for p, q in queues.items()])

    def _check(self, error: KafkaError) -> bool:
        """True at the end of a partition; False for a transient error (librdkafka fetches again
        once it recovers; logged now and then); raises TopicError for any other."""
        if error.code() == KafkaError._PARTITION_EOF:
            return True
        if not transient(error):
            raise TopicError(f"reading topic {self.topic!r} failed: {error.str()}; {_CHECK_ACCESS}")
        self._last_error = error
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "transient error reading, waited out topic=%s error=%s code=%s give_up_after_s=%.0f",
                self.topic,
                error.str(),
                error.name(),
                WAIT_S,
            )
            self.refresh()
        return False
