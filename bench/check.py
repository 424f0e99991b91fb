"""Part 3's value check: each drain's predictions of a fixed sample of keys against the model on the
keys' full histories (worker/verify.py's computation), so that a fast drain of wrong values counts
for nothing. The sampled events are regenerated from the pre-load's seed, not read back."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.kafka_io import BenchError, Predictions, event_values, partition_of
from worker.codec import Event
from worker.synthetic import key_name
from worker.verify import VerifyReport, expected_predictions

log = logging.getLogger(__name__)
SAMPLE_KEYS = 64
TOLERANCE = 1e-5  # the worker's own verify's


@dataclass(frozen=True)
class Expected:
    """The full-history prediction of each sampled event, rows in the order of `src`."""

    src: np.ndarray  # partition << 40 | offset, sorted
    y: np.ndarray  # [events, outputs]
    keys: int
    seconds: float = 0.0  # to compute them, once for every drain of the input


@dataclass(frozen=True)
class ValueCheck:
    """One drain's predictions of the sampled events against `Expected`."""

    events: int
    keys: int
    missing: int  # sampled events without a prediction
    wrong: int  # sampled events with a prediction off by more than the tolerance
    max_abs_diff: float
    seconds: float = 0.0  # the comparison's, what the check adds to the drain

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.wrong == 0

    def summary(self) -> str:
        text = f"values checked: {self.events:,} events of {self.keys:,} keys, max |diff| {self.max_abs_diff:.2g}"
        return text if self.ok else f"{text}, {self.wrong:,} wrong (> {TOLERANCE:g}), {self.missing:,} missing"


def sampled_events(
    events: int, keys: int, partitions: int, seed: int = 0, sample: int = SAMPLE_KEYS
) -> list[tuple[bytes, Event]]:
    """Every event of `sample` keys (chosen by a seeded rng) as `BenchKafka.preload_events` sent them
    into a fresh topic: its idempotent producer keeps send order, so offsets count up per partition."""
    order, x = event_values(events, keys, seed)
    names = [key_name(k) for k in range(keys)]
    part = np.array([partition_of(name, partitions) for name in names], np.int64)[order]
    offset = np.empty(events, np.int64)
    for p in range(partitions):
        sent = np.flatnonzero(part == p)
        offset[sent] = np.arange(sent.size)
    chosen = np.random.default_rng(seed + 2).choice(keys, size=min(sample, keys), replace=False)
    picked = np.flatnonzero(np.isin(order, chosen))  # in send order: each key's history in order
    return [(names[order[i]], Event(int(part[i]), int(offset[i]), x[i], 0, False, False)) for i in picked]


def expected(model: object, events: list[tuple[bytes, Event]]) -> Expected:
    """The model's output on each prefix of each sampled key's history: one call per prefix length."""
    started = time.monotonic()
    report = VerifyReport()
    by_src = expected_predictions(model, events, report)
    src = np.array([(p << 40) | offset for p, offset in by_src], np.int64)
    y = np.stack([np.asarray(v, np.float64) for v in by_src.values()]) if by_src else np.empty((0, 1))
    rows = np.argsort(src)
    return Expected(src[rows], y[rows], report.keys, time.monotonic() - started)


def value_sample(model_path: Path, events: int, keys: int, partitions: int, seed: int = 0) -> Expected:
    """`expected` of the pre-loaded input's sample, for the model the workers serve."""
    from worker.model import load_model

    sample = expected(load_model(str(model_path)), sampled_events(events, keys, partitions, seed))
    log.info("value check: %d events of %d keys computed in %.1f s", sample.src.size, sample.keys, sample.seconds)
    return sample


def check_values(want: Expected, got: Predictions, tolerance: float = TOLERANCE) -> ValueCheck:
    """Every prediction of a sampled event (duplicates too) against its full-history value."""
    started = time.monotonic()
    mine = np.isin(got.src, want.src)
    src = got.src[mine]
    rows = np.searchsorted(want.src, src)
    if got.y.shape[1:] == want.y.shape[1:]:
        diff = np.abs(got.y[mine] - want.y[rows]).max(axis=1, initial=0.0)
    else:  # another output width: nothing of it can be right
        diff = np.full(src.size, np.inf)
    bad = ~(diff <= tolerance)  # NaN is wrong too
    return ValueCheck(
        events=int(want.src.size),
        keys=want.keys,
        missing=int(want.src.size - np.unique(src).size),
        wrong=int(np.unique(src[bad]).size),
        max_abs_diff=float(diff.max(initial=0.0)),  # NaN when a value is
        seconds=time.monotonic() - started,
    )


def require(check: ValueCheck | None, what: str) -> None:
    """A drain with a wrong or a missing sampled prediction fails its part: its figure does not count."""
    if check is None:
        return
    log.info("%s: %s (compared in %.2f s)", what, check.summary(), check.seconds)
    if not check.ok:
        raise BenchError(f"{what}: {check.summary()}")
