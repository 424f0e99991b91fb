"""The state store: LRU in front, compacted co-partitioned state topic behind.

Per assigned partition it keeps an index key -> offset of the key's latest state record,
built at restore and kept current from delivery reports, so an LRU miss costs one read
by offset. `end` keys are first written as a zero state (keeping their `src`, so a replay
cannot re-apply them) and tombstoned only once the input offsets past them are committed.

At restore a key's state is the one with the highest `src` (its version: a key's events have
increasing input offsets), not the last in the topic: a member cut off from the cluster may have
its older states land after the new owner's newer ones.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import compress, pairwise, repeat
from operator import itemgetter

import numpy as np

from worker.codec import CodecError, StateBatch, StateEncoder, StateRecord, decode_state
from worker.errors import ModelError
from worker.kafka.output import OutputProducer
from worker.kafka.reader import Records, TopicReader
from worker.metrics import Metrics
from worker.options import OnModelMismatch
from worker.state.cache import EntityId, StateCache

log = logging.getLogger(__name__)

_UNSEEN = -(2**63)  # the src of a key no state record of has been read yet
# of the cache's rows, the most whose queued states a commit point's rounds set aside
KEPT_SHARE = 0.25


class _Versions:
    """While a partition is restored: the src of the state record at each offset read (a key's
    is at its index offset: set in bulk, no dict of its own), and the src of keys deleted since."""

    def __init__(self) -> None:
        self.low = 0
        self.src = np.empty(0, dtype=np.int64)
        self.deleted: dict[bytes, int] = {}  # key -> src of its last state, read before a deletion

    def put(self, offsets: list[int], src: np.ndarray) -> None:
        """The records at these ascending offsets carry these src."""
        first, last = offsets[0], offsets[-1]
        if not len(self.src):
            self.low = first
        if first < self.low or last - self.low >= len(self.src):  # grown by doubling
            low = min(self.low, first)
            grown = np.full(max(2 * len(self.src), last - low + 1), _UNSEEN, dtype=np.int64)
            grown[self.low - low : self.low - low + len(self.src)] = self.src
            self.low, self.src = low, grown
        if last - first == len(offsets) - 1:  # contiguous, as a partition's records mostly are
            self.src[first - self.low : last - self.low + 1] = src
        else:
            self.src[np.array(offsets, dtype=np.int64) - self.low] = src

    def at(self, offsets: np.ndarray) -> np.ndarray:
        """The src of the records at these offsets, _UNSEEN where none was read (-1: no offset)."""
        at = offsets - self.low
        inside = (at >= 0) & (at < len(self.src))
        if inside.all():
            return self.src[at]
        out = np.full(len(offsets), _UNSEEN, dtype=np.int64)
        out[inside] = self.src[at[inside]]
        return out

    def before(self, offset: int | None, key: bytes) -> int:
        """The src of the key's state read so far (at `offset`, its index entry), or of the state
        it had when deleted, or _UNSEEN."""
        if offset is None:
            return self.deleted.get(key, _UNSEEN)
        return int(self.at(np.array([offset], dtype=np.int64))[0])

    def delete(self, offset: int | None, key: bytes) -> None:
        """The key's state at `offset` is deleted: its src still counts against older states."""
        if offset is not None and (src := self.before(offset, key)) != _UNSEEN:
            self.deleted[key] = src


def fresh_records(src: np.ndarray, newest: np.ndarray, keys: list[bytes]) -> np.ndarray:
    """Which of these records (in topic order) are applied: record i carries `src[i]`, and the
    highest src read before the batch for its key is `newest[i]`; a record is applied unless its
    src is below that of a state read before it (ties: the later one wins)."""
    fresh = src >= newest
    n = len(keys)
    if len(set(keys)) == n:  # the common case: each key once
        return fresh
    # a key several times: each record against the highest src of the key's records before it
    # in the batch (those below it were stale, so that is the newest applied), per key at once
    group = np.fromiter(map(dict(zip(keys, range(n), strict=True)).__getitem__, keys), dtype=np.int64, count=n)
    order = np.argsort(group, kind="stable")  # key by key, each in topic order
    first = np.ones(n, dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    values, rank = np.unique(src[order], return_inverse=True)
    base = (np.cumsum(first) - 1) * len(values)  # a running max of ranks, key by key
    running = np.maximum.accumulate(rank + base) - base
    ok = first.copy()
    ok[1:] |= src[order][1:] >= values[running[:-1]]
    fresh[order] &= ok
    return fresh


@dataclass
class _Queued:
    """The rows a commit point took, to be produced in slices between rounds, from the cache
    itself: a row holds the commit point's state until a round changes it, and a round first sets
    aside its rows still queued (`StateStore.settle`), so only those are copied, when they change
    (docs/performance.md, "State writes after a commit point")."""

    ids: list[EntityId]
    rows: np.ndarray
    step: np.ndarray  # step, src and ts as of the commit point (rounds change them in place)
    partitions: np.ndarray
    src: np.ndarray
    ts: np.ndarray
    done: np.ndarray = field(init=False)  # produced already: in order from the front, or ahead by `settle`
    left: int = field(init=False)
    front: int = 0  # every record before it is done
    kept: np.ndarray | None = None  # the commit point's states of rows a round changed, set aside
    kept_at: np.ndarray = field(init=False)  # record -> its row of `kept`, -1 where the cache holds it
    kept_count: int = 0

    def __post_init__(self) -> None:
        self.done = np.zeros(len(self.rows), dtype=bool)
        self.left = len(self.rows)
        self.kept_at = np.full(len(self.rows), -1, dtype=np.int64)

    def keep(self, which: np.ndarray, states: np.ndarray, limit: int) -> None:
        """Set these records' states aside, before a round changes their rows in the cache: at
        most `limit` of them in all, in one allocation whose pages are touched as rows fill it
        (growing it by copies stalled the rounds right after a commit point)."""
        count = self.kept_count + len(which)
        if self.kept is None:
            self.kept = np.empty((min(len(self.rows), limit), states.shape[1]), np.float32)
        self.kept[self.kept_count : count] = states
        self.kept_at[which] = np.arange(self.kept_count, count)
        self.kept_count = count

    def states(self, which: np.ndarray, cache: np.ndarray) -> np.ndarray:
        """These records' states: from the cache, or as set aside."""
        states = cache[self.rows[which]]
        at = self.kept_at[which]
        aside = at >= 0
        if self.kept is not None and aside.any():
            states[aside] = self.kept[at[aside]]
        return states

    def next(self, limit: int | None) -> np.ndarray:
        """Indexes of the next `limit` (all when None) records not produced yet, in order."""
        waiting = np.flatnonzero(~self.done[self.front :]) + self.front
        return waiting if limit is None else waiting[:limit]

    def without(self, partition: int) -> _Queued | None:
        keep = np.flatnonzero(~self.done & (self.partitions != partition))
        if not len(keep):
            return None
        ids = [self.ids[i] for i in keep.tolist()]
        queue = _Queued(ids, self.rows[keep], self.step[keep], self.partitions[keep], self.src[keep], self.ts[keep])
        aside = np.flatnonzero(self.kept_at[keep] >= 0)
        if self.kept is not None and len(aside):
            queue.keep(aside, self.kept[self.kept_at[keep[aside]]], len(self.kept))
        return queue


class StateStore:
    def __init__(
        self,
        cache: StateCache,
        reader: TopicReader,
        sizes: list[int],
        fingerprint: str,
        metrics: Metrics,
        on_mismatch: OnModelMismatch = "reset",
        track_idle: bool = False,
    ) -> None:
        self.cache = cache
        self.reader = reader
        self.sizes = sizes
        self.fingerprint = fingerprint
        self.metrics = metrics
        self.on_mismatch = on_mismatch
        self.encoder = StateEncoder(sizes, fingerprint)
        self.index: dict[int, dict[bytes, int]] = {}
        # while restoring, per partition: the src of the states read, deleted keys' too (a stale
        # state after a tombstone must not bring the key back); freed by `end_restore`
        self._versions: dict[int, _Versions] = {}
        self._stale = 0  # stale state records ignored by the current restore
        # partition -> key -> (event ts, input offset) of the last event in the written state,
        # for --state-ttl only: a tuple per key (docs/performance.md, "Memory")
        self.track_idle = track_idle
        self.seen: dict[int, dict[bytes, tuple[int, int]]] = {}
        self.ended: dict[EntityId, int] = {}
        self._queue: _Queued | None = None  # states of the last commit point, being produced
        # cache row -> its record's index in the queue, -1 when not queued: a round's rows are
        # looked up with one NumPy call (4 bytes per key of capacity)
        self._slot = np.full(cache.capacity, -1, dtype=np.int32)
        # queued states set aside at most (a bound on the memory that costs); the rest go out when changed
        self.keep_limit = max(1, int(cache.capacity * KEPT_SHARE))

    # -- restore and forget -------------------------------------------------------

    def begin_restore(self, partitions: list[int]) -> None:
        """Start rebuilding these partitions' index from the state topic; `apply` each record."""
        self._stale = 0
        for p in partitions:
            self.index[p] = {}
            self._versions[p] = _Versions()
            if self.track_idle:
                self.seen[p] = {}

    def expect(self, offsets: dict[int, tuple[int, int]]) -> None:
        """The restore reads these offsets [low, high) of its partitions: room for their src at once."""
        for p, (low, high) in offsets.items():
            versions = self._versions.get(p)
            if versions is not None and not len(versions.src):
                versions.low, versions.src = low, np.full(high - low, _UNSEEN, dtype=np.int64)

    def end_restore(self, partitions: list[int]) -> int:
        """These partitions are restored: frees what only the restore needed; returns how many
        stale state records it ignored."""
        for p in partitions:
            self._versions.pop(p, None)
        stale, self._stale = self._stale, 0
        return stale

    def _ignore_stale(self, count: int) -> None:
        self._stale += count
        self.metrics.stale_state_records.inc(count)

    def apply(self, p: int, offset: int, key: bytes, value: bytes | None) -> None:
        """One state record read at restore: index it and warm the LRU with it, unless a state of
        the key with a higher src was read before it."""
        index = self.index.get(p)
        if index is None:  # revoked while restoring
            return
        record = None if value is None else self._decode(p, offset, value)
        versions = self._versions.setdefault(p, _Versions())
        if record is None:  # deleted, unreadable or of another model: the key starts from zero
            versions.delete(index.pop(key, None), key)
            self.seen.get(p, {}).pop(key, None)
            self.cache.remove((p, key))
            return
        if record.src_offset < versions.before(index.get(key), key):
            self._ignore_stale(1)
            return
        versions.put([offset], np.array([record.src_offset], dtype=np.int64))
        index[key] = offset
        if self.track_idle:
            self.seen[p][key] = (record.ts, record.src_offset)
        if self.cache.room() > 0:
            self.cache.insert(
                (p, key), record.state, step=record.step, src=record.src_offset, ts=record.ts, dirty=False
            )
        else:  # an older state of the key must not stay warm
            self.cache.remove((p, key))

    def apply_many(self, records: Records) -> None:
        """State records read at restore, in order: those of this model and layout decoded and
        cached together, the others (tombstones, other models or writers) one by one between."""
        indexes, batch = self.encoder.decode_many(records.values)
        decoded = np.zeros(len(records), dtype=bool)
        decoded[indexes] = True
        row_of = np.cumsum(decoded) - 1  # record -> its row of the batch
        cuts = np.flatnonzero(np.diff(decoded, prepend=False, append=False)).tolist()  # run starts and ends
        done = 0
        for a, b in [*zip(cuts[::2], cuts[1::2], strict=True), (len(records), len(records))]:
            for i in range(done, a):  # [done, a): not decoded together
                self.apply(records.partitions[i], records.offsets[i], records.keys[i], records.values[i])
            if a < b:  # [a, b): a run of decoded records
                self._apply_decoded(
                    records.partitions[a:b], records.offsets[a:b], records.keys[a:b], row_of[a:b], batch
                )
            done = b

    def _apply_decoded(
        self, partition_of: list[int], offsets: list[int], keys: list[bytes], rows_of: np.ndarray, batch: StateBatch
    ) -> None:
        """Index these records (record k is row rows_of[k] of the batch) and warm the LRU with the
        newest of them, as `apply` would (stale ones ignored): partition by partition, with bulk
        dict updates."""
        partitions = np.array(partition_of, dtype=np.int64)
        bounds = [0, *(np.flatnonzero(np.diff(partitions)) + 1).tolist(), len(partitions)]
        eids: list[EntityId] = []
        kept: list[np.ndarray] = []
        for a, b in pairwise(bounds):  # a run of one partition's records
            p = partition_of[a]
            index = self.index.get(p)
            if index is None:  # revoked while restoring
                continue
            run_keys, run_offsets, rows = keys[a:b], offsets[a:b], rows_of[a:b]
            versions = self._versions.setdefault(p, _Versions())
            src = batch.src_offset[rows]
            versions.put(run_offsets, src)  # stale ones too: only offsets in the index are read
            fresh = self._fresh(index, versions, run_keys, run_offsets, src)
            if fresh is not None:
                self._ignore_stale(int(len(fresh) - fresh.sum()))
                chosen = fresh.tolist()
                run_keys, run_offsets = list(compress(run_keys, chosen)), list(compress(run_offsets, chosen))
                rows = rows[fresh]
                # a key's applied records have rising src: the later one of a key wins the update
                index.update(zip(run_keys, run_offsets, strict=True))
            eids.extend(zip(repeat(p, len(run_keys)), run_keys, strict=True))
            kept.append(rows)
        if not eids:
            return
        js = np.concatenate(kept)
        self._track(eids, batch.ts[js], batch.src_offset[js])
        cache = self.cache
        room = cache.room()
        if room < len(eids):  # rows for the last `room` only: the others' older states must not stay warm
            for eid in eids[: len(eids) - max(room, 0)]:
                if eid in cache:
                    cache.remove(eid)
        if room <= 0:
            return
        rows = np.array(cache.place_many(eids[-room:]), dtype=np.int64)
        js = js[-room:]
        if len(np.unique(rows)) < len(rows):  # a key twice in the run: its later record wins
            _, last = np.unique(rows[::-1], return_index=True)
            keep = len(rows) - 1 - last
            rows, js = rows[keep], js[keep]
        # most batches are decoded and placed whole: then the batch's states go to the cache
        # as they are, without a gathered copy into fresh memory (docs/performance.md, "Restore batches")
        whole = len(js) == len(batch.states) and js[0] == 0 and bool((np.diff(js) == 1).all())
        cache.states[rows] = batch.states if whole else batch.states[js]
        cache.step[rows], cache.src[rows], cache.ts[rows] = batch.step[js], batch.src_offset[js], batch.ts[js]

    @staticmethod
    def _fresh(
        index: dict[bytes, int], versions: _Versions, keys: list[bytes], offsets: list[int], src: np.ndarray
    ) -> np.ndarray | None:
        """Indexes the records of one partition that no state read before them outdates. None when
        that is all of them, indexed then; else which they are, for the caller to index (over
        what this may have indexed of the batch: each key has a fresh record, its later one wins)."""
        unseen = not versions.deleted or versions.deleted.keys().isdisjoint(keys)
        if unseen and index.keys().isdisjoint(keys):  # the common case: keys not read before
            known = len(index)
            index.update(zip(keys, offsets, strict=True))
            if len(index) - known == len(keys):  # and each once
                return None
            fresh = fresh_records(src, np.full(len(keys), _UNSEEN, dtype=np.int64), keys)
            return None if fresh.all() else fresh
        at = np.fromiter(map(index.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))
        before = versions.at(at)
        if versions.deleted:  # keys not indexed may have been deleted, with their src
            gone = at < 0
            before[gone] = np.fromiter(
                map(versions.deleted.get, compress(keys, gone.tolist()), repeat(_UNSEEN)),
                dtype=np.int64,
                count=int(gone.sum()),
            )
        fresh = fresh_records(src, before, keys)
        if fresh.all():
            index.update(zip(keys, offsets, strict=True))
            return None
        return fresh

    def _track(self, eids: list[EntityId], ts: np.ndarray, src: np.ndarray) -> None:
        """--state-ttl: the keys' (event ts, input offset) of the last event in their state."""
        if not self.track_idle:
            return
        for (partition, key), last in zip(eids, zip(ts.tolist(), src.tolist(), strict=True), strict=True):
            seen = self.seen.get(partition)
            if seen is not None:  # None: revoked meanwhile
                seen[key] = last

    def forget(self, partition: int) -> None:
        """Drop a revoked partition; its dirty states must have been written first (a lost
        partition's queued states are dropped: another member may own it already)."""
        if self._queue is not None:
            self._set_queue(self._queue.without(partition))
        self.index.pop(partition, None)
        self._versions.pop(partition, None)
        self.seen.pop(partition, None)
        self.cache.remove_partition(partition)
        self.ended = {eid: off for eid, off in self.ended.items() if eid[0] != partition}

    # -- rounds ---------------------------------------------------------------------

    def resolve(self, ids: list[EntityId]) -> np.ndarray:
        """Cache rows holding these keys' states, pinned (dirty) for the round.

        Hits come from the LRU, misses from the state topic (read together), the rest
        start from zero. The caller ensures `cache.room() >= len(ids)`, and `settle`s the rows
        before it changes them.
        """
        resident = self.cache.lookup_many(ids)
        if None not in resident:  # the common case
            self.cache.dirty.update(resident)  # type: ignore[arg-type]
            self.metrics.cache_lookups.labels("hit").inc(len(ids))
            return np.array(resident, dtype=np.int64)
        # pinned before any miss takes a row: an eviction must not take a row of this round
        self.cache.dirty.update(row for row in resident if row is not None)
        rows = np.empty(len(ids), dtype=np.int64)
        missing: dict[int, list[int]] = {}
        missing_at: list[tuple[int, EntityId, int]] = []
        hits = new = 0
        for i, (eid, row) in enumerate(zip(ids, resident, strict=True)):
            if row is not None:
                hits += 1
                rows[i] = row
                continue
            offset = self.index.get(eid[0], {}).get(eid[1])
            if offset is None:
                new += 1
                rows[i] = self.cache.insert(eid, None, step=0, src=-1, ts=0, dirty=True)
            else:
                missing.setdefault(eid[0], []).append(offset)
                missing_at.append((i, eid, offset))
        if missing_at:
            found = self.reader.read_offsets(missing)
            for i, eid, offset in missing_at:
                rows[i] = self._load(eid, offset, found.get((eid[0], offset)))
        self.metrics.cache_lookups.labels("hit").inc(hits)
        self.metrics.cache_lookups.labels("miss").inc(len(missing_at))
        self.metrics.cache_lookups.labels("new").inc(new)
        return rows

    def _load(self, eid: EntityId, offset: int, record: tuple[int, int, bytes, bytes | None] | None) -> int:
        decoded = None if record is None or record[3] is None else self._decode(eid[0], offset, record[3])
        if decoded is None:
            return self.cache.insert(eid, None, step=0, src=-1, ts=0, dirty=True)
        return self.cache.insert(
            eid, decoded.state, step=decoded.step, src=decoded.src_offset, ts=decoded.ts, dirty=True
        )

    def _decode(self, partition: int, offset: int, value: bytes) -> StateRecord | None:
        try:
            record = decode_state(value, self.sizes)
        except CodecError as exc:
            log.error(
                "unreadable state record partition=%d offset=%d: %s; starting that key from zero",
                partition,
                offset,
                exc,
            )
            return None
        if record.model != self.fingerprint:
            self.metrics.model_mismatch.inc()
            if self.on_mismatch == "fail":
                raise ModelError(
                    f"the state at partition {partition} offset {offset} of the state topic was written by model "
                    f"{record.model}, the loaded model is {self.fingerprint}; serve the model that wrote the states, "
                    "use a new --state-topic, or start keys from zero with --on-model-mismatch reset"
                )
            log.warning(
                "state of another model partition=%d offset=%d model=%s loaded=%s: reset to zero",
                partition,
                offset,
                record.model,
                self.fingerprint,
            )
            return None
        return record

    def end(self, eid: EntityId, row: int, offset: int) -> None:
        """After an `end` event: zero state now, tombstone once offsets are committed past it."""
        self.cache.states[row] = 0.0
        self.cache.step[row] = 0
        self.ended[eid] = offset

    def continued(self, eid: EntityId) -> None:
        """A key got new events: a pending tombstone would delete live state."""
        self.ended.pop(eid, None)

    # -- writes -------------------------------------------------------------------

    def queue_dirty(self, producer: OutputProducer, topic: str) -> int:
        """Queue every dirty state, to be written by `write_queued` in slices between rounds: the
        caller has flushed the predictions before, and rounds may go on (a row a round takes is
        produced first, as the commit point left it). The rows stay pinned until their records
        are acknowledged. What an earlier call queued is written first."""
        self.write_queued(producer, topic)
        taken, ids = self.cache.take_dirty()
        if not taken:
            return 0
        rows = np.array(taken, dtype=np.int64)
        partitions = np.fromiter(map(itemgetter(0), ids), dtype=np.int64, count=len(ids))
        cache = self.cache
        self._set_queue(_Queued(ids, rows, cache.step[rows], partitions, cache.src[rows], cache.ts[rows]))
        return len(rows)

    def _set_queue(self, queue: _Queued | None) -> None:
        """The queue being produced, and the slots of its rows."""
        if self._queue is not None:
            self._slot[self._queue.rows] = -1
        self._queue = queue
        if queue is not None:
            self._slot[queue.rows] = np.arange(len(queue.rows), dtype=np.int32)

    @property
    def queued(self) -> int:
        """States taken by `queue_dirty` and not produced yet."""
        return 0 if self._queue is None else self._queue.left

    def write_queued(self, producer: OutputProducer, topic: str, limit: int | None = None) -> int:
        """Produce the next `limit` queued states (all when None), encoded together."""
        queue = self._queue
        if queue is None:
            return 0
        which = queue.next(limit)
        if len(which):
            queue.front = int(which[-1]) + 1
        return self._produce_queued(producer, topic, which)

    def settle(self, producer: OutputProducer, topic: str, rows: np.ndarray) -> int:
        """Before a round changes these rows: the queued states among them set aside, to go out in
        their turn, not all in the rounds right after a commit point (a burst the broker serves
        before the predictions behind it); past `keep_limit` states set aside, produced now.
        Returns how many were set aside or produced."""
        queue = self._queue
        if queue is None:  # the common case once a commit point's states are out
            return 0
        at = self._slot[rows]
        at = at[at >= 0]
        at = at[queue.kept_at[at] < 0]  # set aside already: the commit point's state is safe
        if not len(at):
            return 0
        at = np.sort(at)
        room = max(0, self.keep_limit - queue.kept_count)
        if room:
            queue.keep(at[:room], self.cache.states[queue.rows[at[:room]]], self.keep_limit)
        return min(room, len(at)) + self._produce_queued(producer, topic, at[room:])

    def _produce_queued(self, producer: OutputProducer, topic: str, which: np.ndarray) -> int:
        queue = self._queue
        if queue is None or not len(which):
            return 0
        rows, src, ts = queue.rows[which], queue.src[which], queue.ts[which]
        values = self.encoder.encode(
            queue.states(which, self.cache.states), queue.step[which], queue.partitions[which], src, ts
        )
        ids = [queue.ids[i] for i in which.tolist()]
        producer.produce_many(topic, ids, values)
        self._track(ids, ts, src)
        queue.done[which] = True
        queue.left -= len(which)
        self._slot[rows] = -1
        if not queue.left:
            self._queue = None
        self.metrics.state_writes.labels("state").inc(len(which))
        return len(which)

    def write_queued_share(self, producer: OutputProducer, topic: str, share: float) -> int:
        """Produce queued states until `share` (0 to 1) of those the commit point took are out:
        paced by time, not by loop iterations, which are short at light load and long under a
        backlog (a fixed number per iteration sent them in bursts right after a commit point)."""
        queue = self._queue
        if queue is None:
            return 0
        due = math.ceil(min(1.0, share) * len(queue.ids)) - (len(queue.ids) - queue.left)
        return self.write_queued(producer, topic, due) if due > 0 else 0

    def write_dirty(self, producer: OutputProducer, topic: str) -> int:
        """Produce every queued and dirty state now (caller has flushed the predictions before);
        returns how many."""
        written = self.write_queued(producer, topic)
        self.queue_dirty(producer, topic)
        return written + self.write_queued(producer, topic)

    def write_tombstones(self, producer: OutputProducer, topic: str, committed: dict[int, int]) -> int:
        """Tombstone ended keys whose end event is below the committed offset."""
        due = [
            eid for eid, off in self.ended.items() if off < committed.get(eid[0], -1) and not self.cache.is_dirty(eid)
        ]
        for eid in due:
            self._tombstone(producer, topic, eid)
        return len(due)

    def expire(
        self,
        producer: OutputProducer,
        topic: str,
        ttl_ms: int,
        stream_time: dict[int, int],
        committed: dict[int, int],
        active: Callable[[EntityId], bool],
    ) -> int:
        """Tombstone keys idle for longer than `ttl_ms` of their partition's stream time
        (its newest event timestamp), so replays and backlogs never expire live keys; only
        keys whose last event is below the committed offset, so a replay cannot re-apply it."""
        due = [
            (p, key)
            for p, seen in self.seen.items()
            for key, (ts, src) in seen.items()
            if stream_time.get(p, ts) - ts > ttl_ms
            and src < committed.get(p, -1)
            and not self.cache.is_dirty((p, key))
            and not active((p, key))
        ]
        for eid in due:
            self._tombstone(producer, topic, eid)
        self.metrics.expired_keys.inc(len(due))
        return len(due)

    def _tombstone(self, producer: OutputProducer, topic: str, eid: EntityId) -> None:
        row = self.cache.row_of(eid)
        if row is not None and self._queue is not None and (at := int(self._slot[row])) >= 0:
            # a queued state of the key goes first, or it would outlive the tombstone
            self._produce_queued(producer, topic, np.array([at], dtype=np.int64))
        producer.produce(topic, eid[1], None, eid[0])
        self.cache.remove(eid)
        self.ended.pop(eid, None)
        self.seen.get(eid[0], {}).pop(eid[1], None)
        self.metrics.state_writes.labels("tombstone").inc()

    def delivered(self, partition: int, key: bytes, offset: int, tombstone: bool) -> None:
        """Delivery report of a state record: keep the index pointing at the latest one."""
        self.cache.written((partition, key))
        index = self.index.get(partition)
        if index is None:
            return
        if tombstone:
            index.pop(key, None)
        else:
            index[key] = offset
