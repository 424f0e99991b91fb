"""`lstm-worker verify --plot`: a PNG of a few keys' streaming predictions over the offline ones.

`verify` fills a `PredictionTrace` as it goes (the offline full-history prediction of every event
of the chosen keys, then the worker's prediction of each as it is read back); `plot_trace` draws
one panel per key, the offline line under the streaming points, as the source blog plotted each
of its approaches against the full-history call. matplotlib is the optional `demo` extra and is
imported only when a plot is drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.codec import Event
from worker.errors import WorkerError

log = logging.getLogger(__name__)

Src = tuple[int, int]


@dataclass
class KeyTrace:
    """One key's events in order: offline and (once read) streaming prediction of each."""

    key: bytes
    partition: int
    offline: np.ndarray  # (events,) first output of the full-history model
    streaming: np.ndarray  # (events,) NaN until the worker's prediction is read

    @property
    def max_abs_diff(self) -> float:
        seen = ~np.isnan(self.streaming)
        return float(np.max(np.abs(self.streaming[seen] - self.offline[seen]))) if seen.any() else float("nan")


@dataclass
class PredictionTrace:
    """The keys to plot: those with the most events (ties: lowest key), at most `max_keys`."""

    max_keys: int = 4
    keys: list[KeyTrace] = field(default_factory=list)
    _where: dict[Src, tuple[int, int]] = field(default_factory=dict)  # src -> (key index, event index)

    def choose(self, events: Sequence[tuple[bytes, Event]], expected: dict[Src, np.ndarray]) -> None:
        by_key: dict[tuple[int, bytes], list[Event]] = {}
        for key, event in events:
            if (event.partition, event.offset) in expected:
                by_key.setdefault((event.partition, key), []).append(event)
        ranked = sorted(by_key.items(), key=lambda item: (-len(item[1]), item[0][1], item[0][0]))
        for (partition, key), evs in ranked[: self.max_keys]:
            index = len(self.keys)
            offline = np.array([float(np.ravel(expected[(e.partition, e.offset)])[0]) for e in evs])
            self.keys.append(KeyTrace(key, partition, offline, np.full(len(evs), np.nan)))
            for i, e in enumerate(evs):
                self._where[(e.partition, e.offset)] = (index, i)

    def observe(self, src: Src, y: Sequence[float]) -> None:
        where = self._where.get(src)
        if where is not None:
            self.keys[where[0]].streaming[where[1]] = float(y[0])


def require_matplotlib() -> None:
    """Fail before a long verification, not after it, when the `demo` extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise WorkerError("--plot needs matplotlib: pip install 'lstm-stream-worker[demo]'") from exc


def plot_trace(trace: PredictionTrace, path: str, title: str = "") -> None:
    """Write the PNG: one panel per key, offline line, streaming points, their largest difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(trace.keys))
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, kt in zip(axes.flat, trace.keys, strict=False):
        steps = np.arange(1, len(kt.offline) + 1)
        ax.plot(steps, kt.offline, color="tab:blue", linewidth=4, alpha=0.35, label="offline, full history per event")
        ax.plot(steps, kt.streaming, "o", color="tab:orange", markersize=3, label="streaming, one step per event")
        ax.set_title(f"{kt.key.decode(errors='replace')} (partition {kt.partition}) max |diff| {kt.max_abs_diff:.1e}")
        ax.set_xlabel("event of the key")
        ax.set_ylabel("prediction y[0]")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(trace.keys) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False)
    fig.suptitle(title or "Streaming predictions (carried state) vs the model on each full history")
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("plot written path=%s keys=%d", path, len(trace.keys))
