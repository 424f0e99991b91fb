"""Reads a topic by hand: whole partitions (state restore, verify), records by offset (LRU misses).

A consumer of its own with manual assignment (no group), so reading state never
disturbs the group member's assignment or position.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from worker.errors import TopicError

log = logging.getLogger(__name__)

Record = tuple[int, int, bytes, bytes | None]  # partition, offset, key, value (None: tombstone)


@dataclass(slots=True)
class Records:
    """A consume() batch as columns (record i is item i of each list): each field is read for
    the whole batch with one `map`, not record by record (a restore of 200,000 records took ~1 us
    less per record, BENCHMARKS.md analysis)."""

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
_STALL_S = 60.0


class TopicReader:
    def __init__(self, settings: dict[str, Any], topic: str) -> None:
        self.topic = topic
        self._consumer = Consumer({**settings, "enable.partition.eof": True})

    def close(self) -> None:
        self._consumer.close()

    def end_offsets(self, partitions: list[int]) -> dict[int, tuple[int, int]]:
        """(low, high) watermarks of the partitions holding records."""
        ends = {}
        for p in partitions:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=30.0)
            if high > low:
                ends[p] = (low, high)
        return ends

    def _batches(self, waiting: dict[int, Any]) -> Iterator[list[Any]]:
        """consume() batches while anything is awaited; fails loudly when nothing arrives."""
        last_progress = time.monotonic()
        while waiting:
            msgs = self._consumer.consume(num_messages=2000, timeout=0.5)
            if msgs:
                last_progress = time.monotonic()
                yield msgs
            elif time.monotonic() - last_progress > _STALL_S:
                raise TopicError(
                    f"topic {self.topic!r}: nothing read for {_STALL_S:.0f} s from partitions "
                    f"{sorted(waiting)}; is the broker reachable and the topic readable?"
                )

    def read_partitions(self, partitions: list[int]) -> Iterator[Record]:
        """Every record of the partitions, from the beginning to the end as of this call."""
        for batch in self.read_partition_batches(self.end_offsets(partitions)):
            yield from batch.rows()

    def read_partition_batches(self, offsets: dict[int, tuple[int, int]]) -> Iterator[Records]:
        """The records from each partition's low to its high watermark (`end_offsets`), a
        consume() batch at a time (the restore decodes a batch together)."""
        ends = {p: high for p, (_, high) in offsets.items()}
        self._consumer.assign([TopicPartition(self.topic, p, low) for p, (low, _) in offsets.items()])
        for msgs in self._batches(ends):
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
                self._check(error)
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
                    self._check(m.error())
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

    def _check(self, error: KafkaError) -> None:
        if error.code() != KafkaError._PARTITION_EOF:
            raise TopicError(f"reading topic {self.topic!r} failed: {error}")
