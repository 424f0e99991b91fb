"""Dynamic batching: pending events grouped by key into rounds of one model call.

A round holds up to `max_keys` keys, each with up to `max_steps` of its pending events
in offset order. A `reset` event only ever opens a key's slice (it starts from zero
state) and an `end` event only ever closes one (its state is dropped after it), so one
masked multi-step call covers every key of the round.

Events stay columns (NumPy arrays and a list of keys) from the poll to the predictions, with
no object per event (docs/performance.md, "Events as columns").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.state.cache import EntityId


@dataclass(slots=True)
class Events:
    """Decoded events as columns: event i is item i of `ids` and row i of every array."""

    ids: list[EntityId]  # (partition, key) of each event
    partition: np.ndarray  # int64
    offset: np.ndarray  # int64
    ts: np.ndarray  # int64
    reset: np.ndarray  # bool
    end: np.ndarray  # bool
    x: np.ndarray  # [n, features] float32

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, index: np.ndarray) -> Events:
        """The events at these positions, in this order."""
        ids = self.ids
        return Events([ids[i] for i in index.tolist()], *(getattr(self, name)[index] for name in _ARRAYS))


_ARRAYS = ("partition", "offset", "ts", "reset", "end", "x")  # Events' columns after `ids`, in order


@dataclass(slots=True)
class Packed:
    """A round as model inputs, and where each of its events sits in them."""

    x: np.ndarray  # [keys, steps, features], right-padded with zeros
    mask: np.ndarray  # [keys, steps], True on each key's events
    key_of: np.ndarray  # [events] the key (row of x) of each event, in round order
    step_of: np.ndarray  # [events] its step (column of x)


@dataclass(slots=True)
class Round:
    """The keys of one model call and their events, key by key, each key's in offset order.
    A batcher's rounds list their keys longest slice first."""

    ids: list[EntityId]
    lengths: np.ndarray  # [keys] events of each key
    events: Events

    @property
    def starts(self) -> np.ndarray:
        """Each key's first event."""
        return np.cumsum(self.lengths) - self.lengths

    def pack(self) -> Packed:
        """The events' inputs placed at (key, step) in one scatter."""
        lengths, xs = self.lengths, self.events.x
        key_of = np.repeat(np.arange(len(lengths)), lengths)
        step_of = np.arange(len(xs)) - np.repeat(self.starts, lengths)
        steps = int(lengths.max()) if len(lengths) else 0
        if steps == 1:
            x = xs.reshape(len(xs), 1, xs.shape[1])
        else:
            x = np.zeros((len(lengths), steps, xs.shape[1]), dtype=np.float32)
            x[key_of, step_of] = xs
        mask = np.arange(steps)[None, :] < lengths[:, None]
        return Packed(x, mask, key_of, step_of)


# What a model call costs beyond its key-steps, in key-steps, from make bench's kernel table
# (docs/performance.md, "Steps per round")
CALL_COST, STEP_COST = 64.0, 16.0


def round_steps(pending: np.ndarray | list[int], max_steps: int) -> int:
    """Steps per key of a round: the count that gets the most events per unit of model time,
    not always the longest queue. The cost counts padded steps as real ones, which holds for
    the TensorFlow backends; the NumPy step skips them (rounds list keys longest first), so
    for it this overstates what longer rounds cost."""
    lengths = np.minimum(np.asarray(pending), max_steps)
    longest = int(lengths.max())
    if longest == 1:
        return 1
    candidates = np.arange(1, longest + 1)
    events = np.minimum(lengths[None, :], candidates[:, None]).sum(axis=1)
    cost = CALL_COST + candidates * (STEP_COST + len(lengths))
    return int(candidates[np.argmax(events / cost)])


Columns = dict[str, np.ndarray]  # a batcher's pending events, each key as its code


class Batcher:
    """Holds decoded events until a round is worth running.

    Keys are served in the order of their first pending event, and a key with events left
    after a round goes behind the others. Pending events are arrays, each key an integer code:
    a round costs NumPy calls over everything pending but Python only over the events it
    takes (16,384 events wait under a backlog, a round takes ~2,000).
    """

    def __init__(self, max_keys: int, max_steps: int) -> None:
        self.max_keys = max_keys
        self.max_steps = max_steps
        self._code: dict[EntityId, int] = {}
        self._keys: list[EntityId] = []  # code -> key
        self._count = np.zeros(0, dtype=np.int64)  # code -> its pending events
        self._distinct = 0  # keys with pending events, -1: not counted since the last add
        self._parts: list[Columns] = []  # joined by the next call that needs them together
        self.pending_events = 0

    def __len__(self) -> int:
        return self.pending_events

    def add(self, events: Events) -> None:
        if not len(events):
            return
        # a new key's code is its event's place in the codes given out so far, so that codes
        # and their keys are assigned in C: `_keys[c]` is right for every code in use, and the
        # places of events whose key had a code already stay unused until codes are renumbered
        n, start = len(events), len(self._keys)
        codes = np.fromiter(map(self._code.setdefault, events.ids, range(start, start + n)), np.int64, count=n)
        self._keys.extend(events.ids)
        if len(self._keys) > len(self._count):
            self._count = np.concatenate([self._count, np.zeros(len(self._keys), dtype=np.int64)])
        np.add.at(self._count, codes, 1)
        self._distinct = -1  # counted when asked
        self._parts.append({"code": codes, **{name: getattr(events, name) for name in _ARRAYS}})
        self.pending_events += len(events)

    def _pending(self) -> Columns:
        if len(self._parts) > 1:
            self._parts = [{name: np.concatenate([part[name] for part in self._parts]) for name in self._parts[0]}]
        return self._parts[0]

    def _keep(self, pending: Columns, index: np.ndarray) -> None:
        """Pending from now on: these events, in this order; keys' codes renumbered when most
        codes are of keys with nothing pending (a long backlog over many keys)."""
        kept = {name: column[index] for name, column in pending.items()}
        self.pending_events = len(index)
        self._parts = [kept] if len(index) else []
        self._count = np.bincount(kept["code"], minlength=len(self._keys))
        self._distinct = int(np.count_nonzero(self._count))
        if len(self._keys) > 4 * self._distinct + 4 * self.max_keys:
            used, kept["code"] = np.unique(kept["code"], return_inverse=True)
            self._keys = list(map(self._keys.__getitem__, used.tolist()))
            self._code = dict(zip(self._keys, range(len(used)), strict=True))
            self._count = self._count[used]

    def distinct_keys(self) -> int:
        """Keys with events waiting."""
        if self._distinct < 0:
            self._distinct = int(np.count_nonzero(self._count))
        return self._distinct

    def has(self, eid: EntityId) -> bool:
        """The key has events waiting."""
        code = self._code.get(eid)
        return code is not None and bool(self._count[code])

    def backlogged(self) -> bool:
        """A full round of full slices is pending: run rounds before taking in more."""
        return self.pending_events >= self.max_keys * self.max_steps

    def ready(self, caught_up: bool) -> bool:
        """A round runs as soon as the poll took everything buffered (`caught_up`), or when full:
        a round grows only by events already waiting, never by waiting for more
        (docs/performance.md, "Latency at light load")."""
        if not self.pending_events:
            return False
        return caught_up or self.distinct_keys() >= self.max_keys or self.backlogged()

    def take(self) -> Round:
        """The next round: the keys waiting longest, each with its next slice of events."""
        pending = self._pending()
        code = pending["code"]
        chosen = self._first_keys(code)
        rank = np.full(len(self._keys), -1, dtype=np.int64)
        rank[chosen] = np.arange(len(chosen))
        ranks = rank[code]
        theirs = np.flatnonzero(ranks >= 0)  # the chosen keys' events, in arrival order
        by_key = np.argsort(ranks[theirs], kind="stable")
        order = theirs[by_key]  # key by key, each key's in arrival order
        counts = np.bincount(ranks[theirs], minlength=len(chosen))
        steps = round_steps(counts, self.max_steps)
        starts = np.cumsum(counts) - counts
        nth = np.arange(len(order)) - np.repeat(starts, counts)  # each event's place in its key
        taken = nth < steps
        reset, end = pending["reset"][order], pending["end"][order]
        if steps > 1 and (reset.any() or end.any()):
            # a slice stops before a reset and after an end: count such breaks within each key
            breaks = (nth > 0) & (reset | np.concatenate([[False], end[:-1]]))
            seen = np.cumsum(breaks)
            taken &= seen == np.repeat(seen[starts], counts)  # a key's first event is never a break
        index = order[taken]
        lengths = np.bincount(ranks[index], minlength=len(chosen))
        if steps > 1:  # longest slices first: the keys with an event at step t are then a prefix of the rows
            by_length = np.argsort(-lengths, kind="stable")
            place = np.empty_like(by_length)
            place[by_length] = np.arange(len(by_length))
            index = index[np.argsort(place[ranks[index]], kind="stable")]
            chosen, lengths = chosen[by_length], lengths[by_length]
        key_of = self._keys.__getitem__
        events = Events(list(map(key_of, code[index].tolist())), *(pending[name][index] for name in _ARRAYS))
        round_ = Round(list(map(key_of, chosen.tolist())), lengths, events)
        left = order[~taken]  # behind the keys not served
        self._keep(pending, np.concatenate([np.flatnonzero(ranks < 0), left]))
        return round_

    def _first_keys(self, code: np.ndarray) -> np.ndarray:
        """The first `max_keys` distinct codes in arrival order, found in the shortest prefix
        that holds them: under a backlog a round's keys are the first ~2,000 of ~16,000 events."""
        span = 2 * self.max_keys
        while True:
            keys, first = np.unique(code[:span], return_index=True)
            if len(keys) >= self.max_keys or span >= len(code):
                return keys[np.argsort(first)[: self.max_keys]]
            span *= 4

    def min_pending_offsets(self) -> dict[int, int]:
        """Per partition, the lowest offset still waiting: offsets below it are processed."""
        if not self.pending_events:
            return {}
        pending = self._pending()
        partition, offset = pending["partition"], pending["offset"]
        return {p: int(offset[partition == p].min()) for p in np.unique(partition).tolist()}

    def drop_partition(self, partition: int) -> int:
        """Forget a revoked partition's pending events; the next owner re-reads them."""
        if not self.pending_events:
            return 0
        pending = self._pending()
        kept = np.flatnonzero(pending["partition"] != partition)
        dropped = self.pending_events - len(kept)
        if dropped:
            self._keep(pending, kept)
        return dropped
