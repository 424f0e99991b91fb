"""What one run measured (`BenchResults`), where it ran, and its figures against the targets
of bench/targets.py: what the report and the plots are made of."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING

from bench.drain import DrainResult
from bench.latency import LatencyResult
from bench.peer_run import PeerDrainResult
from bench.state import StateResult
from bench.stats import Target, kernel_rate_at
from bench.targets import KEYS_HELD, TARGETS, VERSUS_RATES
from worker.synthetic import Produced

if TYPE_CHECKING:
    from bench.kernel import KernelResult, NearDrain, Timing
    from bench.versus import Versus


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        tf = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        tf = "?"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, TensorFlow {tf}"


@dataclass(frozen=True)
class Scheduling:
    """The CPU priorities the run's processes had: the broker and the load generator stand for
    machines of their own, and share these cores with the worker under test at a lower one."""

    workers: int  # nice of the bench's main thread, which the workers it starts inherit
    generator: int  # asked for; each latency run reads back what it ran at
    broker: int | None  # read from /proc at the start; None when no broker pid was given or it was not running
    broker_pid: int | None = None


@dataclass
class BenchResults:
    command: str
    date: str
    machine: str
    load: str  # load average when the run started
    kernel: KernelResult
    drain_input: Produced | None = None
    drain: DrainResult | None = None
    scaling: DrainResult | None = None
    latency: LatencyResult | None = None  # at LATENCY_LOAD_SHARE of the drain rate
    state: StateResult | None = None
    plots: dict[str, str] = field(default_factory=dict)  # plot name -> path relative to the report
    errors: dict[str, str] = field(default_factory=dict)  # part -> why it failed
    wall_s: float = 0.0
    latency_low: LatencyResult | None = None  # at LOW_LOAD_SHARE: what a worker serves live when it keeps up
    near_drain: NearDrain | None = None  # the drain's yardsticks timed again right after it
    broker_warmup: LatencyResult | None = None  # live load before part 3, not counted
    scheduling: Scheduling | None = None  # parts 3-6 only
    formats: list[DrainResult] = field(default_factory=list)  # part 3's drains after `drain`, in run order
    formats_skipped: dict[str, str] = field(default_factory=dict)  # format -> why its drain did not run
    peer_drain: PeerDrainResult | None = None  # the Quix Streams peer's drain of part 3's topic
    versus: list[Versus] = field(default_factory=list)  # part 4: worker and peer at each VERSUS_RATES
    peer_skipped: str | None = None  # why the peer did not run

    @property
    def format_runs(self) -> list[DrainResult]:
        """Part 3's one-worker drains in the order they ran: the first msgpack one, then the formats'."""
        return ([self.drain] if self.drain else []) + self.formats

    @property
    def kernel_at_drain(self) -> float:
        """The worker's backend's kernel events/s at the drain's mean round size: timed right
        after the drain when it was, else interpolated from part 1's sweep."""
        if self.near_drain is not None:
            return self.near_drain.kernel_per_s
        return self.swept_kernel_at_drain

    @property
    def swept_kernel_at_drain(self) -> float:
        if self.drain is None:
            return float("nan")
        return kernel_rate_at(self.kernel.sweep, self.kernel.backend, self.drain.round_keys)

    @property
    def single_step(self) -> Timing:
        """The per-event compiled step the drain is compared with: timed right after the drain
        when it was, else part 2's."""
        if self.near_drain is not None:
            return self.near_drain.single_step
        return self.kernel.baseline("one compiled step")


def _mean_rate(runs: Sequence[DrainResult], fmt: str) -> float:
    rates = [d.events_per_s for d in runs if d.format == fmt]
    return sum(rates) / len(rates) if rates else float("nan")


def msgpack_rate(runs: Sequence[DrainResult]) -> float:
    """The mean events/s of the run's msgpack drains, before and after the other formats': a
    machine whose speed drifts over part 3 moves the denominator with it (NaN: none ran)."""
    return _mean_rate(runs, "msgpack")


def format_ratio(runs: Sequence[DrainResult], fmt: str) -> float:
    """The mean events/s of `fmt`'s drains over that of the msgpack drains of the same run."""
    return _mean_rate(runs, fmt) / msgpack_rate(runs)


def versus_ratio(r: BenchResults, rate: float, q: float) -> float:
    """The worker's latency quantile `q` over the peer's at `rate`: NaN when the peer did not keep
    up (it has no latency there) or did not run, infinite when the worker alone did not."""
    run = next((v for v in r.versus if v.rate == rate), None)
    if run is None or not run.peer.sustained:
        return float("nan")
    if not run.worker.sustained:
        return float("inf")
    return run.worker.quantiles[q] / run.peer.quantiles[q]


def peer_figures(r: BenchResults) -> dict[str, float]:
    """The figures of the peer's targets: the drain against the msgpack drains' mean, the latencies."""
    peer = r.peer_drain.events_per_s if r.peer_drain else float("nan")
    figures = {"drain_vs_peer": msgpack_rate(r.format_runs) / peer}
    for rate in VERSUS_RATES:
        figures |= {f"p{q:.0f}_vs_peer_{rate}": versus_ratio(r, rate, q) for q in (50.0, 99.0)}
    lat, d = r.latency, r.drain
    figures["p99_drain_events"] = lat.quantiles[99.0] / 1000 * d.events_per_s if lat and d else float("nan")
    return figures


def measures(r: BenchResults) -> dict[str, float]:
    """The figures the targets name, each of this run alone (NaN: its part did not run)."""
    nan = float("nan")
    d, s, lat = r.drain, r.state, r.latency
    drain = d.events_per_s if d else nan
    return {
        "kernel_vs_products": r.kernel.vs_products,
        "drain_vs_kernel": drain / r.kernel_at_drain,
        "drain_per_s": drain,
        "drain_vs_classic": drain / r.kernel.baseline("classic").events_per_s,
        "drain_vs_single_step": drain / r.single_step.events_per_s,
        "json_vs_msgpack": format_ratio(r.format_runs, "json"),
        "avro_vs_msgpack": format_ratio(r.format_runs, "avro"),
        "latency_p99_ms": lat.quantiles[99.0] if lat else nan,
        "state_vs_raw": s.vs_raw if s else nan,
        "rss_keys_held_gb": (s.idle_rss + s.bytes_per_key * KEYS_HELD) / 1e9 if s else nan,
        "restore_per_s": s.restore_per_s if s else nan,
        **peer_figures(r),
    }


def targets(r: BenchResults) -> list[Target]:
    figures = measures(r)
    return [Target(g.label(), figures[g.figure], g.limit, g.higher_is_better, g.unit) for g in TARGETS]
