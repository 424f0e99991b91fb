"""One round: the keys' states in, one batched model step, a prediction per event out.

Imports nothing of Kafka but the producer it is handed; the model is anything with a
batched, masked, state-carrying `step`.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from worker.batching import Packed, Round
from worker.formats import PredictionEncoding
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
        state_topic: str,
        encoder: PredictionEncoding,
        metrics: Metrics,
        clock: PhaseClock,
    ) -> None:
        self.model = model
        self.store = store
        self.output_topic = output_topic
        self.state_topic = state_topic
        self.metrics = metrics
        self.clock = clock
        self.encoder = encoder
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
        self.store.settle(producer, self.state_topic, rows)  # what the last commit point queued of them
        kept, rows = self._drop_applied(rnd, rows)
        if not kept.ids:
            self.clock.lap("state")
            return
        packed = kept.pack()
        state = cache.states[rows]
        resets = np.flatnonzero(kept.events.reset[kept.starts])  # a key opened by a reset starts from zero
        if len(resets):
            state[resets] = 0.0
            cache.step[rows[resets]] = 0
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
        applied = np.repeat(self.store.cache.src[rows], rnd.lengths)
        fresh = rnd.events.offset > applied
        if fresh.all():
            return rnd, rows
        self.metrics.events.labels("skipped").inc(int(len(fresh) - fresh.sum()))
        lengths = np.add.reduceat(fresh.astype(np.int64), rnd.starts)
        keep = np.flatnonzero(lengths)
        ids, events = rnd.ids, rnd.events.select(np.flatnonzero(fresh))
        return Round([ids[k] for k in keep.tolist()], lengths[keep], events), rows[keep]

    def _publish(self, rnd: Round, rows: np.ndarray, y: np.ndarray, packed: Packed, producer: OutputProducer) -> None:
        """Every event's prediction, encoded in one call; then each key's step, src and ts."""
        cache, events, key_of = self.store.cache, rnd.events, packed.key_of
        ts, offsets, partitions = events.ts, events.offset, events.partition
        steps = cache.step[rows][key_of] + packed.step_of + 1
        values = self.encoder.encode(y[key_of, packed.step_of], ts, partitions, offsets, steps)
        producer.produce_many(self.output_topic, events.ids, values)
        self.metrics.latency.observe_many(np.maximum(0.0, time.time() * 1000.0 - ts) / 1000.0)
        last = np.cumsum(rnd.lengths) - 1
        cache.step[rows] += rnd.lengths
        cache.src[rows], cache.ts[rows] = offsets[last], ts[last]
        last_ts, key_partitions = ts[last], partitions[last]
        for p in np.unique(key_partitions).tolist():
            newest = int(last_ts[key_partitions == p].max())
            if newest > self.stream_time.get(p, -1):
                self.stream_time[p] = newest
        store, ids = self.store, rnd.ids
        ended = events.end[last]
        for k in np.flatnonzero(ended).tolist():
            store.end(ids[k], int(rows[k]), int(offsets[last[k]]))
        if store.ended:
            for k in np.flatnonzero(~ended).tolist():
                store.continued(ids[k])
        self.metrics.predictions.inc(len(events))
        self.metrics.events.labels("predicted").inc(len(events))
