"""The in-process LRU of per-key states.

States live as rows of one preallocated float32 array, so a round gathers and scatters
its keys' states with one NumPy call each; per-key Python objects would cost more than
the arithmetic. Dirty rows (newer than the state topic) are pinned: eviction only ever
drops clean rows, so a state is never lost before it is written.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import cast

import numpy as np

from worker.errors import CacheFullError
from worker.options import RUN
from worker.state.memory import zeroed_rows

EntityId = tuple[int, bytes]  # (events partition, key): each partition is its own task


class StateCache:
    """Bounded by key count; rows carry step, src offset and ts beside the state."""

    def __init__(self, capacity: int, state_dim: int) -> None:
        self.capacity = capacity
        self.states = zeroed_rows(capacity, state_dim)
        self.step = np.zeros(capacity, dtype=np.int64)
        self.src = np.full(capacity, -1, dtype=np.int64)
        self.ts = np.zeros(capacity, dtype=np.int64)
        self._rows: OrderedDict[EntityId, int] = OrderedDict()
        self._ids: list[EntityId | None] = [None] * capacity
        self._free = list(range(capacity - 1, -1, -1))
        # rows are handed out lowest first, freed ones before any never used: those are always
        # the free list's first `_pristine` (the rows from `fresh_row` up)
        self._pristine = capacity
        self.dirty: set[int] = set()
        # keys whose state record is produced but not acknowledged yet: pinned like dirty rows,
        # since until then an LRU miss would read the key's previous record back
        self.writing: set[EntityId] = set()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, eid: EntityId) -> bool:
        return eid in self._rows

    @property
    def nbytes(self) -> int:
        """Bytes of state held (resident rows only), for the cache-bytes gauge."""
        return len(self._rows) * self.states.shape[1] * 4

    @property
    def fresh_row(self) -> int:
        """The lowest row never used: it and every row above it are untouched memory."""
        return self.capacity - self._pristine

    def room(self) -> int:
        """Rows that can be (re)used now without writing anything (a key both dirty and being
        written counts twice: a safe underestimate)."""
        return self.capacity - len(self.dirty) - len(self.writing)

    def lookup_many(self, eids: list[EntityId]) -> list[int | None]:
        """The rows of these keys (None: not resident), each resident one marked most recently
        used in this order: a round's lookups, the dict calls run in C over the whole list."""
        rows = list(map(self._rows.get, eids))
        touch = self._rows.move_to_end
        if None in rows:
            eids = [eid for eid, row in zip(eids, rows, strict=True) if row is not None]
        deque(map(touch, eids), maxlen=0)
        return rows

    def row_of(self, eid: EntityId) -> int | None:
        """The key's row, None when not resident; no LRU touch."""
        return self._rows.get(eid)

    def is_dirty(self, eid: EntityId) -> bool:
        row = self.row_of(eid)
        return row is not None and row in self.dirty

    def place(self, eid: EntityId) -> int:
        """The key's row, most recently used: its own, a free one or an evicted clean one.
        The caller writes the row (the restore writes many rows with one NumPy call)."""
        row = self._rows.get(eid)
        if row is None:
            if self._free:
                row = self._free.pop()
                self._pristine = min(self._pristine, len(self._free))
            else:
                row = self._evict()
            self._rows[eid] = row
            self._ids[row] = eid
        else:
            self._rows.move_to_end(eid)
        return row

    def place_many(self, eids: list[EntityId]) -> list[int]:
        """`place` for many keys (a restore batch): new distinct keys with enough free rows
        take them in bulk, anything else goes key by key."""
        free, count = self._free, len(eids)
        if count > len(free) or not self._rows.keys().isdisjoint(eids) or len(set(eids)) < count:
            return [self.place(eid) for eid in eids]
        rows = free[len(free) - count :][::-1]  # the rows `place` would pop, in its order
        del free[len(free) - count :]
        self._pristine = min(self._pristine, len(free))
        self._rows.update(zip(eids, rows, strict=True))
        ids = self._ids
        for row, eid in zip(rows, eids, strict=True):
            ids[row] = eid
        return rows

    def insert(self, eid: EntityId, state: np.ndarray | None, *, step: int, src: int, ts: int, dirty: bool) -> int:
        """Place a key's state (zeros when None) in a free or evicted row."""
        row = self.place(eid)
        if state is None:
            self.states[row] = 0.0
        else:
            self.states[row] = state
        self.step[row], self.src[row], self.ts[row] = step, src, ts
        if dirty:
            self.dirty.add(row)
        return row

    def _evict(self) -> int:
        for eid, row in self._rows.items():
            if row not in self.dirty and eid not in self.writing:
                del self._rows[eid]
                self._ids[row] = None
                return row
        cache_keys = RUN["cache_keys"]
        raise CacheFullError(
            f"all {self.capacity} cached states are newer than the state topic or being written to it, so none "
            f"can be evicted for the next key: raise {cache_keys.flag} / {cache_keys.env} above the round's keys "
            f"(or lower {RUN['max_batch_keys'].flag})"
        )

    def mark_dirty(self, rows: np.ndarray | list[int]) -> None:
        self.dirty.update(int(r) for r in rows)

    def take_dirty(self) -> tuple[list[int], list[EntityId]]:
        """The dirty rows and their keys, now clean and being written: pinned until `written`.
        Mapped in C: a commit point takes every key active since the last one."""
        rows = sorted(self.dirty)
        self.dirty.clear()
        ids = cast(list[EntityId], list(map(self._ids.__getitem__, rows)))
        assert None not in ids, "a free row was dirty"
        self.writing.update(ids)
        return rows, ids

    def written(self, eid: EntityId) -> None:
        """The key's state record is acknowledged: its row may be evicted (unless dirty again)."""
        self.writing.discard(eid)

    def remove(self, eid: EntityId) -> None:
        self.writing.discard(eid)
        row = self._rows.pop(eid, None)
        if row is not None:
            self._ids[row] = None
            self.dirty.discard(row)
            self._free.append(row)

    def remove_partition(self, partition: int) -> int:
        """Forget a revoked partition's keys; its dirty rows must have been written first."""
        gone = [eid for eid in self._rows if eid[0] == partition]
        for eid in gone:
            self.remove(eid)
        return len(gone)
