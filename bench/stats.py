"""The benchmark's arithmetic, free of Kafka and TensorFlow: percentiles, the kernel's rate at a
round size, the loop's time per phase, and how far a measurement is from its target."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

QUANTILES = (50.0, 99.0, 99.9)


def percentiles(values: Sequence[float] | np.ndarray, quantiles: Iterable[float] = QUANTILES) -> dict[float, float]:
    """Quantile -> value (linear interpolation between order statistics); empty input gives NaN."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {q: float("nan") for q in quantiles}
    return {q: float(np.percentile(data, q)) for q in quantiles}


def kernel_rate_at(sweep: Sequence[tuple[str, int, float]], backend: str, keys: float) -> float:
    """Events/s of one batched step of `keys` keys, interpolated from the sweep of `backend`.

    Seconds per round are close to affine in the round size (a fixed call cost plus a cost per
    key), so they are interpolated linearly between the two measured sizes around `keys`; outside
    the measured range the nearest size's events/s is used.
    """
    rows = sorted((size, seconds) for name, size, seconds in sweep if name == backend)
    if not rows:
        raise ValueError(f"no kernel rows of backend {backend!r}")
    sizes = np.array([size for size, _ in rows], dtype=np.float64)
    seconds = np.array([s for _, s in rows], dtype=np.float64)
    if keys <= sizes[0]:
        return float(sizes[0] / seconds[0])
    if keys >= sizes[-1]:
        return float(sizes[-1] / seconds[-1])
    return float(keys / np.interp(keys, sizes, seconds))


def phase_deltas(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Seconds per phase between two readings of the loop's busy counters (summed over workers)."""
    return {phase: max(0.0, after.get(phase, 0.0) - before.get(phase, 0.0)) for phase in after}


def shares(seconds: Mapping[str, float]) -> dict[str, float]:
    """Each phase's share of the total (0 everywhere when nothing was measured)."""
    total = sum(seconds.values())
    return {phase: (value / total if total > 0 else 0.0) for phase, value in seconds.items()}


def events_per_s(count: int, first_ms: float, last_ms: float) -> float:
    """Rate from the first to the last of `count` timestamps: count-1 intervals between them."""
    span = (last_ms - first_ms) / 1000.0
    if count < 2 or span <= 0:
        return float("nan")
    return (count - 1) / span


@dataclass(frozen=True)
class Target:
    """A target of bench/targets.py against the value a run measured."""

    what: str
    measured: float
    limit: float
    higher_is_better: bool = True
    unit: str = ""

    def shown(self) -> str:
        """The measured value in its unit ("share" as a percentage)."""
        v = self.measured
        if v != v:
            return "-"
        if self.unit == "share":
            return f"{v * 100:.0f}%"
        number = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"
        return f"{number}x" if self.unit == "x" else f"{number} {self.unit}".strip()

    @property
    def met(self) -> bool:
        if self.higher_is_better:
            return self.measured >= self.limit
        return self.measured <= self.limit

    def verdict(self) -> str:
        """'met' or how far off, as a factor and a percentage of the target."""
        if self.measured != self.measured:  # NaN: not measured
            return "not measured"
        factor = self.measured / self.limit if self.limit else float("inf")
        if self.met:
            return f"met ({_factor(factor)}x the target)"
        if self.higher_is_better:
            needs = f", needs {_factor(1 / factor)}x" if factor > 0 else ""
            return f"**missed** by {_percent(1 - factor)}: {_factor(factor)}x the target{needs}"
        return f"**missed**: {_factor(factor)}x the limit, {_percent(factor - 1)} over"


def _factor(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%" if fraction < 0.1 else f"{fraction * 100:.0f}%"
