"""One round: the keys' states in, one batched model step, a prediction per event out.

With `overlap`, a round's step runs on a thread of its own while the loop polls, decodes and
produces around it (BLAS and the fused kernel release the GIL): a round lands (its states into
the cache) before the next one steps, before it even gathers its states where the two share a
key, and its predictions leave while the next one steps (docs/performance.md, "Step overlap").
Imports nothing of Kafka but the producer it is handed; the model is anything with a batched,
masked, state-carrying `step`.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from worker.batching import Packed, Round
from worker.formats import PredictionEncoding
from worker.kafka.output import OutputProducer
from worker.metrics import Metrics, PhaseClock
from worker.state.store import StateStore

Stepped = tuple[np.ndarray, np.ndarray, float]  # outputs, new states, the step's own seconds


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


@dataclass(slots=True)
class _Gathered:
    """A round ready to step: its rows stay pinned (dirty) in the cache until it lands."""

    rnd: Round
    rows: np.ndarray
    packed: Packed


@dataclass(slots=True)
class _Landed:
    """A round whose states are in the cache and whose predictions are not produced yet."""

    rnd: Round
    y: np.ndarray  # each event's output, in round order
    steps: np.ndarray  # each event's step count in its key


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
        overlap: bool = False,
    ) -> None:
        self.model = model
        self.store = store
        self.output_topic = output_topic
        self.state_topic = state_topic
        self.metrics = metrics
        self.clock = clock
        self.encoder = encoder
        self.stream_time: dict[int, int] = {}  # partition -> newest event ts applied
        self._stepper = ThreadPoolExecutor(1, thread_name_prefix="step") if overlap else None
        self._flight: tuple[_Gathered, Future[Stepped]] | None = None
        self._landed: _Landed | None = None

    def warm_up(self) -> None:
        """A one-step and a two-step round before joining the group: the first execution of a
        compiled function optimizes its graph (hundreds of ms), which no real round must pay."""
        features, width = self.model.features, self.model.state_dim
        for steps in (1, 2):
            self.model.step(
                np.zeros((1, steps, features), np.float32), np.ones((1, steps), bool), np.zeros((1, width), np.float32)
            )

    @property
    def in_flight(self) -> bool:
        """A round is being stepped."""
        return self._flight is not None

    def run(self, rnd: Round, producer: OutputProducer) -> None:
        """Start a round. A key of the round in flight steps here from what that one leaves, so
        that one lands first; a round with none of its keys gathers its states while it steps."""
        beside = self._flight is not None and set(self._flight[0].rnd.ids).isdisjoint(rnd.ids)
        if not beside:
            self.land()
        gathered = self._gather(rnd, producer)
        if beside:
            self.land()
        if gathered is not None:
            round_, state = gathered
            x, mask = round_.packed.x, round_.packed.mask
            if self._stepper is None:
                stepped = self._step(x, mask, state)
                self.clock.lap("step")
                self._land(round_, stepped)
            else:
                self._flight = round_, self._stepper.submit(self._step, x, mask, state)
        self._publish(producer)  # the round before's predictions, while this one steps

    def collect(self, producer: OutputProducer, wait: bool) -> None:
        """The round in flight landed and its predictions produced, if its step is done or `wait`."""
        if self._flight is not None and (wait or self._flight[1].done()):
            self.finish(producer)

    def finish(self, producer: OutputProducer) -> None:
        """Every round started landed and its predictions produced: before anything that writes
        states, commits offsets or forgets keys."""
        self.land()
        self._publish(producer)

    def land(self) -> None:
        """The round in flight's states into the cache, once its step is done."""
        if self._flight is None:
            return
        round_, stepped = self._flight
        self._flight = None
        self.clock.lap("state")
        done = stepped.result()
        self.clock.lap("step")  # the loop's wait for the step, not the step's own time
        self._land(round_, done)

    def close(self) -> None:
        """The step thread ended, after the step it runs; a round not finished is dropped (the
        loop finishes every round before its last commit, so only a failure leaves one)."""
        self._flight = self._landed = None
        if self._stepper is not None:
            self._stepper.shutdown(wait=True)

    def _step(self, x: np.ndarray, mask: np.ndarray, state: np.ndarray) -> Stepped:
        started = time.perf_counter()
        y, new_state = self.model.step(x, mask, state)
        return y, new_state, time.perf_counter() - started

    def _gather(self, rnd: Round, producer: OutputProducer) -> tuple[_Gathered, np.ndarray] | None:
        """The round's inputs and its keys' states; None when all of its events were applied already."""
        cache = self.store.cache
        rows = self.store.resolve(rnd.ids)
        self.store.settle(producer, self.state_topic, rows)  # what the last commit point queued of them
        kept, rows = self._drop_applied(rnd, rows)
        if not kept.ids:
            self.clock.lap("state")
            return None
        packed = kept.pack()
        state = cache.states[rows]
        resets = np.flatnonzero(kept.events.reset[kept.starts])  # a key opened by a reset starts from zero
        if len(resets):
            state[resets] = 0.0
            cache.step[rows[resets]] = 0
        self.clock.lap("state")
        return _Gathered(kept, rows, packed), state

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

    def _land(self, gathered: _Gathered, stepped: Stepped) -> None:
        """The new states into the cache with each key's step, src and ts; the predictions kept
        for `_publish`."""
        y, new_state, seconds = stepped
        self.metrics.step_seconds.observe(seconds)
        rnd, rows, packed = gathered.rnd, gathered.rows, gathered.packed
        cache, events, key_of = self.store.cache, rnd.events, packed.key_of
        cache.states[rows] = new_state
        steps = cache.step[rows][key_of] + packed.step_of + 1
        self._landed = _Landed(rnd, y[key_of, packed.step_of], steps)
        ts, offsets, partitions = events.ts, events.offset, events.partition
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
        self.metrics.round_keys.observe(len(rnd.ids))
        self.metrics.round_steps.observe(packed.x.shape[1])
        self.clock.lap("state")

    def _publish(self, producer: OutputProducer) -> None:
        """The landed round's predictions, encoded in one call."""
        landed, self._landed = self._landed, None
        if landed is None:
            return
        events = landed.rnd.events
        values = self.encoder.encode(landed.y, events.ts, events.partition, events.offset, landed.steps)
        producer.produce_many(self.output_topic, events.ids, values)
        self.metrics.latency.observe_many(np.maximum(0.0, time.time() * 1000.0 - events.ts) / 1000.0)
        self.metrics.predictions.inc(len(events))
        self.metrics.events.labels("predicted").inc(len(events))
        self.clock.lap("produce")
