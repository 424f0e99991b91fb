"""One round: the keys' states in, one batched model step, a prediction per event out.

Imports nothing of Kafka but the producer it is handed; the model is anything with a
batched, masked, state-carrying `step`.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from worker.batching import Packed, Round
from worker.codec import PredictionEncoder
from worker.kafka.output import OutputProducer
from worker.metrics import Metrics, PhaseClock
from worker.state.store import StateStore


class StepModel(Protocol):
    """What a round needs of the model (worker.model.StreamingTwin is one)."""

    @property
    def features(self) -> int: ...
    @property
    def state_sizes(self) -> list[int]: ...
    @property
    def state_dim(self) -> int: ...
    @property
    def output_dim(self) -> int: ...

    def step(self, x: np.ndarray, mask: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class RoundRunner:
    def __init__(
        self,
        model: StepModel,
        store: StateStore,
        output_topic: str,
        fingerprint: str,
        metrics: Metrics,
        clock: PhaseClock,
    ) -> None:
        self.model = model
        self.store = store
        self.output_topic = output_topic
        self.fingerprint = fingerprint
        self.metrics = metrics
        self.clock = clock
        self.encoder = PredictionEncoder(model.output_dim, fingerprint)
        self.stream_time: dict[int, int] = {}  # partition -> newest event ts applied

    def warm_up(self) -> None:
        """A one-step and a two-step round before joining the group: the first execution of a
        compiled function optimizes its graph (hundreds of ms), which no real round must pay."""
        features, width = self.model.features, self.model.state_dim
        for steps in (1, 2):
            self.model.step(
                np.zeros((1, steps, features), np.float32), np.ones((1, steps), bool), np.zeros((1, width), np.float32)
            )

    def run(self, rnd: Round, producer: OutputProducer) -> None:
        cache = self.store.cache
        rows = self.store.resolve(rnd.ids)
        kept, rows = self._drop_applied(rnd, rows)
        if not kept.ids:
            self.clock.lap("state")
            return
        packed = kept.pack(self.model.features)
        state = cache.states[rows]
        for b, events in enumerate(kept.events):
            if events[0].reset:
                state[b] = 0.0
                cache.step[rows[b]] = 0
        self.clock.lap("state")
        started = time.perf_counter()
        y, new_state = self.model.step(packed.x, packed.mask, state)
        self.metrics.step_seconds.observe(time.perf_counter() - started)
        self.clock.lap("step")
        cache.states[rows] = new_state
        self._publish(kept, rows, y, packed, producer)
        self.clock.lap("produce")
        self.metrics.round_keys.observe(len(kept.ids))
        self.metrics.round_steps.observe(packed.x.shape[1])

    def _drop_applied(self, rnd: Round, rows: np.ndarray) -> tuple[Round, np.ndarray]:
        """Events at or below a key's `src` are in its state already: never apply them twice."""
        src = self.store.cache.src
        first = np.fromiter((events[0].offset for events in rnd.events), dtype=np.int64, count=len(rnd.events))
        stale = np.flatnonzero(first <= src[rows]).tolist()
        if not stale:
            return rnd, rows
        skipped = 0
        for i in stale:
            applied = int(src[rows[i]])
            fresh = [e for e in rnd.events[i] if e.offset > applied]
            skipped += len(rnd.events[i]) - len(fresh)
            rnd.events[i] = fresh
        self.metrics.events.labels("skipped").inc(skipped)
        keep = [i for i, events in enumerate(rnd.events) if events]
        return Round([rnd.ids[i] for i in keep], [rnd.events[i] for i in keep]), rows[keep]

    def _publish(self, rnd: Round, rows: np.ndarray, y: np.ndarray, packed: Packed, producer: OutputProducer) -> None:
        """Every event's prediction, encoded in one call; then each key's step, src and ts."""
        cache, events, key_of = self.store.cache, packed.events, packed.key_of
        ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=len(events))
        offsets = np.fromiter((e.offset for e in events), dtype=np.int64, count=len(events))
        partitions = np.fromiter((eid[0] for eid in rnd.ids), dtype=np.int64, count=len(rnd.ids))
        steps = cache.step[rows][key_of] + packed.step_of + 1
        values = self.encoder.encode(y[key_of, packed.step_of], ts, partitions[key_of], offsets, steps)
        ids = rnd.ids
        producer.produce_many(self.output_topic, [ids[k] for k in key_of.tolist()], values)
        self.metrics.latency.observe_many(np.maximum(0.0, time.time() * 1000.0 - ts) / 1000.0)
        last = np.cumsum(packed.lengths) - 1
        cache.step[rows] += packed.lengths
        cache.src[rows], cache.ts[rows] = offsets[last], ts[last]
        last_ts, key_partitions = ts[last], partitions
        for p in np.unique(key_partitions).tolist():
            newest = int(last_ts[key_partitions == p].max())
            if newest > self.stream_time.get(p, -1):
                self.stream_time[p] = newest
        store = self.store
        for k, i in enumerate(last.tolist()):
            if events[i].end:
                store.end(ids[k], int(rows[k]), int(offsets[i]))
            elif store.ended:
                store.continued(ids[k])
        self.metrics.predictions.inc(len(events))
        self.metrics.events.labels("predicted").inc(len(events))
