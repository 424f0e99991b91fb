"""Parts 1-2 of the benchmark: the step kernel alone, and the source post's four approaches, in one process.

The streaming twin's batched step per backend and round size is the ceiling of the worker.
The source post's four approaches run on the same model: the full history `predict` per event,
a stateful model, and explicit state in a functional and in a subclassed model, each `predict`
once per event; then the twin's step once per event. Every approach is checked against the
full-history outputs (1e-5) before its time counts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

from bench.targets import PRODUCTS_KEYS
from worker.model.reference import make_reference_model
from worker.model.twin import KERNELS, StreamingTwin
from worker.options import RUN

FEATURES, UNITS = 4, (100, 200)
ROUND_SIZES = (1, 4, 16, 64, 256, 1024, 4096)
PER_EVENT_NUMPY = "streaming twin, one NumPy step per event (round size 1)"
PER_EVENT_COMPILED = "streaming twin, one compiled step per event (round size 1)"


def flops_per_event(units: tuple[int, ...] = UNITS, features: int = FEATURES) -> int:
    """Multiply-adds x 2 of one step: 4 gates of each LSTM layer, then the Dense head."""
    total, width = 0, features
    for u in units:
        total += 2 * 4 * u * (width + u)
        width = u
    return total + 2 * width


@dataclass(frozen=True)
class Timing:
    name: str
    events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


def _timed_once(name: str, events: int, approach: Callable[[], np.ndarray]) -> tuple[Timing, np.ndarray]:
    """One pass of an approach over one key's `events` events, as the source post timed it: its
    outputs and how long the pass took."""
    started = time.perf_counter()
    got = approach()
    return Timing(name, events, time.perf_counter() - started), got


def _timed(fn: Callable[[], object], min_seconds: float) -> float:
    """Seconds per call, repeated until `min_seconds` have passed (after a warm-up call)."""
    fn()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_seconds or calls < 3:
        fn()
        calls += 1
    return elapsed / calls


def kernel_sweep(
    model: keras.Model,
    backends: tuple[str, ...] = KERNELS,
    sizes: tuple[int, ...] = ROUND_SIZES,
    min_seconds: float = 1.0,
) -> list[tuple[str, int, float]]:
    """(backend, keys per round, seconds per round) of one step of every key."""
    rows = []
    for backend in backends:
        twin = StreamingTwin.from_model(model, backend=backend)
        rows += [(backend, size, _round_seconds(twin, size, min_seconds)) for size in sizes]
    return rows


def product_operands(
    keys: int, units: tuple[int, ...] = UNITS, features: int = FEATURES
) -> list[tuple[np.ndarray, ...]]:
    """(a, b, out) of each product the step takes per round, at its shapes: each LSTM layer's
    [x, h] @ [W; U] with its 4 gates, then the Dense head (flops_per_event counts these)."""
    rng = np.random.default_rng(0)
    shapes, width = [], features
    for u in units:
        shapes.append((width + u, 4 * u))
        width = u
    shapes.append((width, 1))
    operands: list[tuple[np.ndarray, ...]] = []
    for inner, outer in shapes:
        a = rng.standard_normal((keys, inner)).astype(np.float32)
        b = rng.standard_normal((inner, outer)).astype(np.float32)
        operands.append((a, b, np.empty((keys, outer), np.float32)))
    return operands


def products_seconds(keys: int = PRODUCTS_KEYS, min_seconds: float = 1.0) -> float:
    """Seconds per round of the step's matrix products alone (BLAS into preallocated outputs):
    the arithmetic's rate, which the kernel's is held to."""
    operands = product_operands(keys)

    def products() -> None:
        for a, b, out in operands:
            np.matmul(a, b, out=out)

    return _timed(products, min_seconds)


def _round_seconds(twin: StreamingTwin, size: int, min_seconds: float) -> float:
    """Seconds per round of one step of `size` keys."""
    x = np.random.default_rng(size).standard_normal((size, 1, FEATURES)).astype(np.float32)
    mask = np.ones((size, 1), bool)
    state = np.zeros((size, twin.state_dim), np.float32)
    return _timed(lambda: twin.step(x, mask, state), min_seconds)


def _explicit_state_model(reference: keras.Model) -> keras.Model:
    """The source post's functional model: states in, states out, weights of the reference."""
    units = [layer.units for layer in reference.layers if isinstance(layer, keras.layers.LSTM)]
    inputs = {"input": keras.Input((None, FEATURES), name="input")}
    outputs: dict[str, object] = {}
    h = inputs["input"]
    layers = []
    for i, u in enumerate(units):
        inputs[f"h{i}"], inputs[f"c{i}"] = keras.Input((u,), name=f"h{i}"), keras.Input((u,), name=f"c{i}")
        layer = keras.layers.LSTM(u, return_sequences=i < len(units) - 1, return_state=True)
        h, outputs[f"h{i}"], outputs[f"c{i}"] = layer(h, initial_state=[inputs[f"h{i}"], inputs[f"c{i}"]])
        layers.append(layer)
    dense = keras.layers.Dense(1, activation="sigmoid")
    outputs["output"] = dense(h)
    model = keras.Model(inputs=inputs, outputs=outputs)
    originals = [layer for layer in reference.layers if isinstance(layer, keras.layers.LSTM)]
    for mine, theirs in zip(layers, originals, strict=True):
        mine.set_weights(theirs.get_weights())
    dense.set_weights(reference.layers[-1].get_weights())
    return model


def _stateful_model(reference: keras.Model, units: list[int]) -> keras.Model:
    """The source post's stateful model: the reference's layers with `stateful=True`, batch of one."""
    inputs = keras.Input((None, FEATURES), batch_size=1)
    h = inputs
    for i, u in enumerate(units):
        h = keras.layers.LSTM(u, return_sequences=i < len(units) - 1, stateful=True)(h)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h))
    model.set_weights(reference.get_weights())
    return model


class SubclassedStepModel(keras.Model):
    """The source post's subclassed model: the same layers called with explicit states."""

    def __init__(self, units: list[int]) -> None:
        super().__init__(name="subclassed")
        self.lstms = [
            keras.layers.LSTM(u, return_sequences=i < len(units) - 1, return_state=True) for i, u in enumerate(units)
        ]
        self.head = keras.layers.Dense(1, activation="sigmoid")

    def call(self, inputs: dict[str, object]) -> dict[str, object]:
        h, out = inputs["input"], {}
        for i, layer in enumerate(self.lstms):
            h, out[f"h{i}"], out[f"c{i}"] = layer(h, initial_state=[inputs[f"h{i}"], inputs[f"c{i}"]])
        out["output"] = self.head(h)
        return out


def _stepwise(
    predict: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], xs: np.ndarray, units: list[int]
) -> np.ndarray:
    state = {f"{k}{i}": np.zeros((1, u), np.float32) for i, u in enumerate(units) for k in "hc"}
    out = []
    for t in range(xs.shape[1]):
        result = predict({"input": xs[:, t : t + 1], **state})
        state = {k: np.asarray(v) for k, v in result.items() if k != "output"}
        out.append(float(np.asarray(result["output"])[0, 0]))
    return np.array(out)


def _events(count: int) -> np.ndarray:
    """One key's events, the same in every part."""
    return np.random.default_rng(1).standard_normal((1, count, FEATURES)).astype(np.float32)


def _per_event_steps(twin: StreamingTwin, xs: np.ndarray) -> Callable[[], np.ndarray]:
    """One key's events, one twin step each: the cost of serving without rounds across keys."""
    twin.step(xs[:, :1], np.ones((1, 1), bool), twin.zero_state(1))  # traced before timing

    def steps() -> np.ndarray:
        state, out = twin.zero_state(1), []
        for t in range(xs.shape[1]):
            y, state = twin.step(xs[:, t : t + 1], np.ones((1, 1), bool), state)
            out.append(float(y[0, 0, 0]))
        return np.array(out)

    return steps


def baselines(model: keras.Model, events: int = 200) -> list[Timing]:
    """The source post's four approaches and a per-event twin step (NumPy, compiled), on one key's `events` events."""
    xs = _events(events)
    units = [layer.units for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    expected = np.array([float(model(xs[:, : i + 1])[0, 0]) for i in range(events)])
    timings = []

    def run(name: str, approach: Callable[[], np.ndarray]) -> None:
        timing, got = _timed_once(name, events, approach)
        diff = float(np.max(np.abs(got - expected)))
        if diff > 1e-5:
            raise AssertionError(f"{name} differs from the full history by {diff}")
        timings.append(timing)

    run(
        "full history, predict per event (the source post's classic)",
        lambda: np.array([float(model.predict(xs[:, : i + 1], verbose=0)[0, 0]) for i in range(events)]),
    )
    stateful = _stateful_model(model, units)
    run(
        "stateful layers, predict per event",
        lambda: np.array([float(stateful.predict(xs[:, i : i + 1], verbose=0)[0, 0]) for i in range(events)]),
    )
    functional = _explicit_state_model(model)
    run(
        "explicit state, functional model, predict per event",
        lambda: _stepwise(lambda inputs: functional.predict(inputs, verbose=0), xs, units),
    )
    subclassed = SubclassedStepModel(units)
    subclassed(
        dict(
            {"input": xs[:, :1]}, **{f"{k}{i}": np.zeros((1, u), np.float32) for i, u in enumerate(units) for k in "hc"}
        )
    )
    for mine, theirs in zip(
        subclassed.lstms, [la for la in model.layers if isinstance(la, keras.layers.LSTM)], strict=True
    ):
        mine.set_weights(theirs.get_weights())
    subclassed.head.set_weights(model.layers[-1].get_weights())
    run(
        "explicit state, subclassed model, predict per event",
        lambda: _stepwise(lambda inputs: subclassed.predict(inputs, verbose=0), xs, units),
    )
    for backend, name in (("numpy", PER_EVENT_NUMPY), ("tf", PER_EVENT_COMPILED)):
        run(name, _per_event_steps(StreamingTwin.from_model(model, backend=backend), xs))
    return timings


@dataclass(frozen=True)
class KernelResult:
    """Part 1 (sweep rows: backend, keys per round, seconds per round) and part 2 (baselines)."""

    sweep: list[tuple[str, int, float]]
    baselines: list[Timing]
    backend: str  # the worker's
    flops: int
    products_s: float = float("nan")  # seconds per round of the matrix products alone, PRODUCTS_KEYS keys

    @property
    def best_events_per_s(self) -> float:
        return max(size / seconds for _, size, seconds in self.sweep)

    @property
    def vs_products(self) -> float:
        """The worker's kernel's rate at PRODUCTS_KEYS keys per round over its products' alone."""
        served = dict((size, seconds) for name, size, seconds in self.sweep if name == self.backend)
        return self.products_s / served.get(PRODUCTS_KEYS, float("nan"))

    def baseline(self, word: str) -> Timing:
        """The first baseline whose name contains `word` ("classic", "one compiled step")."""
        return next(t for t in self.baselines if word in t.name)


def measure_kernel(min_seconds: float = 1.0, events: int = 200) -> KernelResult:
    """Parts 1 and 2 on the reference model (seed 0, as `make-model` writes it)."""
    model = make_reference_model(FEATURES, UNITS, seed=0)
    sweep = kernel_sweep(model, min_seconds=min_seconds)
    products = products_seconds(PRODUCTS_KEYS, min_seconds)
    # what the workers under test serve with: their --backend (they inherit the environment), resolved
    served_by = StreamingTwin.from_model(model, os.environ.get(RUN["backend"].env, RUN["backend"].default)).backend
    return KernelResult(sweep, baselines(model, events), served_by, flops_per_event(), products)


@dataclass(frozen=True)
class NearDrain:
    """The drain's two yardsticks timed again right after it: a shared machine's speed moves from
    minute to minute, and parts 1-2 ran minutes before the drain."""

    round_keys: int
    kernel_per_s: float  # the worker's backend, one step of `round_keys` keys
    single_step: Timing  # the per-event compiled step of part 2 (checked there against the full history)


def time_near_drain(round_keys: float, backend: str, min_seconds: float = 1.0, events: int = 200) -> NearDrain:
    model = make_reference_model(FEATURES, UNITS, seed=0)
    keys = max(1, round(round_keys))
    seconds = _round_seconds(StreamingTwin.from_model(model, backend=backend), keys, min_seconds)
    steps = _per_event_steps(StreamingTwin.from_model(model, backend="tf"), _events(events))
    single, _ = _timed_once(PER_EVENT_COMPILED, events, steps)
    return NearDrain(keys, keys / seconds, single)
