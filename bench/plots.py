"""The report's PNGs: kernel events/s per round size (drain marked), latency distribution, and the
loop's time per phase. matplotlib is the optional `demo` extra, imported only here, when drawing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.stats import percentiles, shares
from bench.targets import Goal

PHASE_ORDER = ("poll", "decode", "state", "step", "produce", "commit", "restore")  # the loop's order


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def kernel_plot(
    path: Path, sweep: list[tuple[str, int, float]], drains: dict[str, tuple[float, float]], flops: int
) -> None:
    """events/s against keys per round, a line per backend; each drain a point at its mean round size."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for backend in sorted({b for b, _, _ in sweep}):
        rows = sorted((size, size / s) for b, size, s in sweep if b == backend)
        ax.plot([x for x, _ in rows], [y for _, y in rows], "o-", label=f"step kernel, {backend}")
    for (label, (keys, rate)), marker in zip(drains.items(), "*DP", strict=False):
        ax.plot([keys], [rate], marker, markersize=13, label=f"{label}: {rate:,.0f} events/s at {keys:.0f} keys/round")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("keys per round (one step each)")
    ax.set_ylabel("events/s")
    ax.set_title(f"Reference model ({flops:,} FLOPs/event): kernel ceiling and end-to-end drain")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_plot(
    path: Path, latency_ms: np.ndarray, rate: float, warmup_ms: np.ndarray | None = None, target: Goal | None = None
) -> None:
    """Empirical CDF of end-to-end latency, quantiles and the target marked (in the legend); the warm-up's apart."""
    plt = _pyplot()
    data = np.sort(np.maximum(latency_ms, 0.5))
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    if warmup_ms is not None and warmup_ms.size:
        warm = np.sort(np.maximum(warmup_ms, 0.5))
        ax.plot(
            warm, np.arange(1, warm.size + 1) / warm.size, color="tab:orange", alpha=0.5, label="warm-up (not counted)"
        )
    if data.size:
        ax.plot(data, np.arange(1, data.size + 1) / data.size, color="tab:blue", label="events counted")
        for (q, value), style in zip(percentiles(data).items(), ("--", "-.", ":"), strict=False):
            ax.axvline(value, color="tab:gray", linestyle=style, linewidth=1, label=f"p{q:g} = {value:,.1f} ms")
    if target is not None:
        ax.axvline(target.limit, color="tab:red", linewidth=1, label=f"target: {target.label()}")
    ax.set_xscale("log")
    ax.set_xlabel("event ts -> prediction log-append time (ms)")
    ax.set_ylabel("share of events at or below")
    ax.set_title(f"End-to-end latency at {rate:,.0f} events/s offered")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def phases_plot(path: Path, runs: dict[str, dict[str, float]]) -> None:
    """One stacked horizontal bar per drain: the loop's time shares per phase, in loop order."""
    plt = _pyplot()
    seen = {p for busy in runs.values() for p in busy}
    phases = [p for p in PHASE_ORDER if p in seen] + sorted(seen - set(PHASE_ORDER))
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.6 * len(runs)))
    names = list(runs)
    left = np.zeros(len(names))
    for phase in phases:
        width = np.array([shares(runs[n]).get(phase, 0.0) * 100 for n in names])
        ax.barh(names, width, left=left, label=phase)
        for i, w in enumerate(width):
            if w >= 4:
                ax.text(left[i] + w / 2, i, f"{w:.0f}%", ha="center", va="center", fontsize=8)
        left += width
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the worker loop's time (lstm_worker_busy_seconds_total), ready to done")
    ax.legend(ncol=len(phases), fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
