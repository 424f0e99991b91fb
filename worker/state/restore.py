"""Restore of newly assigned partitions from the state topic, run in slices.

The loop advances a restore by a bounded number of records per iteration and polls the
group consumer in between, so the other partitions keep flowing, rebalances are served,
and `max.poll.interval.ms` is never at risk, however large the state. Its start, the end
offsets, is retried in later slices while the cluster's metadata settles (a broker gone, a
leader moving), so a wait of minutes never blocks the loop for more than one short attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from confluent_kafka import KafkaException

from worker.heap import trim_heap
from worker.kafka.reader import WATERMARK_TIMEOUT_S, Backoff, Records, TopicReader
from worker.metrics import Metrics
from worker.state.memory import Prefault
from worker.state.store import StateStore

log = logging.getLogger(__name__)
_IDLE_S = 0.5  # at most this long per step waiting for the next attempt, as a read that brings nothing


# Waits, for at most the timeout given (seconds), until the group's committed input offsets of these
# partitions are stable; raises KafkaException once it times out.
StableOffsets = Callable[[list[int], float], object]


class Restore:
    """Reads the state partitions to their end offsets as of the start, into the store.

    With transactions the start waits for `stable_offsets` first: a previous owner's transaction
    whose input offsets reached the group coordinator may still commit (KIP-447 checked its
    generation when they were sent), and those offsets are what this member continues from. Its
    records are acknowledged before its end, so once the offsets are stable (decided) the end
    offsets read next include that transaction's states."""

    def __init__(
        self,
        store: StateStore,
        reader: TopicReader,
        partitions: list[int],
        metrics: Metrics,
        stable_offsets: StableOffsets | None = None,
    ) -> None:
        self.partitions = set(partitions)
        self._store = store
        self._reader = reader
        self._metrics = metrics
        self._started = time.monotonic()
        self._stable_offsets = stable_offsets
        self._offsets: dict[int, tuple[int, int]] = {}  # end offsets known so far
        what = f"the state partitions' end offsets {sorted(partitions)}"
        if stable_offsets is not None:
            what += " (once the group's committed offsets of the input partitions are stable)"
        self._backoff = Backoff(reader.topic, what)
        self._batches: Iterator[Records] | None = None
        self._prefault: Prefault | None = None
        self.count = 0
        store.begin_restore(partitions)
        metrics.restoring_partitions.set(len(partitions))

    def cancel(self, partition: int) -> None:
        """Revoked meanwhile: what is still read of it is ignored."""
        self.partitions.discard(partition)

    def step(self, budget: int) -> bool:
        """Apply about `budget` records (whole consume batches); True once every partition is
        read to its end."""
        if self._batches is None and not self._start():
            return False
        assert self._batches is not None
        read, done = 0, True
        for batch in self._batches:
            if not len(batch):  # nothing arrived for a moment: back to the loop
                done = False
                break
            if not self.partitions.issuperset(batch.partitions):
                batch = batch.take([i for i, p in enumerate(batch.partitions) if p in self.partitions])
            self._store.apply_many(batch)
            read += len(batch)
            if read >= budget:
                done = False
                break
        self.count += read
        self._metrics.restore_records.inc(read)
        if done:
            self._finish()
        return done

    def _start(self) -> bool:
        """Asks the end offsets not known yet, for at most about one attempt's time; starts reading
        once it knows them all (True). A transient error is retried in a later step, with backoff."""
        if not self._backoff.wait(at_most=_IDLE_S):  # no busy loop meanwhile: the loop polls without waiting
            return False
        started = time.monotonic()
        if self._backoff.failures:
            self._reader.refresh()
        if self._stable_offsets is not None:
            try:
                self._stable_offsets(sorted(self.partitions), WATERMARK_TIMEOUT_S)
            except KafkaException as exc:  # still pending (times out), or the coordinator is away
                self._backoff.failed(exc.args[0])
                return False
            self._stable_offsets = None
        for p in sorted(self.partitions - self._offsets.keys()):
            if time.monotonic() - started > WATERMARK_TIMEOUT_S:
                return False  # the rest in the next step
            try:
                self._offsets[p] = self._reader.watermarks(p)
            except KafkaException as exc:
                self._backoff.failed(exc.args[0])  # past the bound, or not transient: TopicError
                return False
        self._backoff.succeeded()
        offsets = {p: (low, high) for p, (low, high) in self._offsets.items() if p in self.partitions and high > low}
        self._store.expect(offsets)
        self._batches = self._reader.read_partition_batches(offsets)
        self._prefault = Prefault(self._store.cache, sum(high - low for low, high in offsets.values()))
        return True

    def close(self) -> None:
        """Stops faulting in rows ahead of it (the restore is done, or the worker stops)."""
        if self._prefault is not None:
            self._prefault.stop()

    def _finish(self) -> None:
        self.close()
        stale = self._store.end_restore(sorted(self.partitions))
        if stale:
            log.warning(
                "ignored stale state records=%d partitions=%s: older (lower src offset) than a state "
                "already read for their key, written late by a member that had lost the partition",
                stale,
                sorted(self.partitions),
            )
        # librdkafka's fetch responses, freed into glibc's heap, which keeps them: given back
        # (docs/performance.md, "Memory after a restore")
        trim_heap()
        elapsed = time.monotonic() - self._started
        self._metrics.restore_seconds.observe(elapsed)
        self._metrics.restoring_partitions.set(0)
        index = self._store.index
        log.info(
            "restored partitions=%s records=%d seconds=%.3f records_per_s=%.0f keys=%s",
            sorted(self.partitions),
            self.count,
            elapsed,
            self.count / max(elapsed, 1e-9),
            {p: len(index[p]) for p in sorted(self.partitions) if p in index},
        )
