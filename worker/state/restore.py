"""Restore of newly assigned partitions from the state topic, run in slices.

The loop advances a restore by a bounded number of records per iteration and polls the
group consumer in between, so the other partitions keep flowing, rebalances are served,
and `max.poll.interval.ms` is never at risk, however large the state.
"""

from __future__ import annotations

import logging
import time

from worker.heap import trim_heap
from worker.kafka.reader import TopicReader
from worker.metrics import Metrics
from worker.state.memory import Prefault
from worker.state.store import StateStore

log = logging.getLogger(__name__)


class Restore:
    """Reads the state partitions to their end offsets as of the start, into the store."""

    def __init__(self, store: StateStore, reader: TopicReader, partitions: list[int], metrics: Metrics) -> None:
        self.partitions = set(partitions)
        self._store = store
        self._metrics = metrics
        self._started = time.monotonic()
        offsets = reader.end_offsets(sorted(partitions))
        self._batches = reader.read_partition_batches(offsets)
        self._prefault = Prefault(store.cache, sum(high - low for low, high in offsets.values()))
        self.count = 0
        store.begin_restore(partitions)
        metrics.restoring_partitions.set(len(partitions))

    def cancel(self, partition: int) -> None:
        """Revoked meanwhile: what is still read of it is ignored."""
        self.partitions.discard(partition)

    def step(self, budget: int) -> bool:
        """Apply about `budget` records (whole consume batches); True once every partition is
        read to its end."""
        read, done = 0, True
        for batch in self._batches:
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

    def close(self) -> None:
        """Stops faulting in rows ahead of it (the restore is done, or the worker stops)."""
        self._prefault.stop()

    def _finish(self) -> None:
        self.close()
        # librdkafka's fetch responses, freed into glibc's heap, which kept them: 36-95 MiB more
        # RSS after a 1M-key restore (throwaway restores), now given back
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
