"""What a run is held to: the targets the report gives a verdict on, as data.

Each names a figure of the run (`bench.results.measures`) and a limit. A figure is a ratio of two
measurements of the same run (the drain against the kernel at its round size, against the
source post's approaches; the JSON and Avro drains against the msgpack drains before and after
them) or one measurement of it; no verdict uses a figure of another run.
Change a target here: the report's table and the latency plot's line follow.
"""

from __future__ import annotations

from dataclasses import dataclass

# The latency target's load, a share of the same run's one-worker drain rate.
LATENCY_LOAD_SHARE = 0.5
# The round size at which the kernel is held to its matrix products' own rate.
PRODUCTS_KEYS = 1024
# The memory target's key count: a worker's RSS idle plus this many keys at the measured bytes per key.
KEYS_HELD = 1_000_000


@dataclass(frozen=True)
class Goal:
    figure: str  # a key of `bench.results.measures`
    what: str  # "{limit}" becomes ">= 40,000 events/s", "<= 1.3x", ...
    limit: float
    higher_is_better: bool = True
    unit: str = ""  # "share" (shown as a percentage), "x", or a unit shown after the number

    def label(self) -> str:
        return self.what.format(limit=f"{'>=' if self.higher_is_better else '<='} {shown_limit(self.limit, self.unit)}")


def shown_limit(value: float, unit: str) -> str:
    number = f"{value:,.0f}" if value == int(value) else f"{value:g}"
    if unit == "share":
        return f"{value * 100:g}%"
    return f"{number}x" if unit == "x" else f"{number} {unit}".strip()


TARGETS: tuple[Goal, ...] = (
    Goal(
        "kernel_vs_products",
        f"kernel at {PRODUCTS_KEYS:,} keys per round {{limit}} of the matrix products' rate",
        0.7,
        unit="share",
    ),
    Goal("drain_vs_kernel", "drain {limit} of the step kernel at the same mean round size", 0.85, unit="share"),
    Goal("drain_per_s", "one worker's drain {limit}", 40_000, unit="events/s"),
    Goal("drain_vs_classic", "drain {limit} the source post's full-history approach", 500, unit="x"),
    Goal("drain_vs_single_step", "drain {limit} the per-event single-step call", 50, unit="x"),
    Goal("json_vs_msgpack", "JSON drain {limit} the msgpack drain", 0.8, unit="x"),
    Goal("avro_vs_msgpack", "Avro drain {limit} the msgpack drain", 0.7, unit="x"),
    Goal(
        "latency_p99_ms",
        f"p99 latency {{limit}} at {LATENCY_LOAD_SHARE:.0%} load",
        50,
        higher_is_better=False,
        unit="ms",
    ),
    Goal("state_vs_raw", "resident state {limit} its raw bytes per key", 1.3, higher_is_better=False, unit="x"),
    Goal(
        "rss_keys_held_gb",
        f"{KEYS_HELD / 1e6:g}M keys in {{limit}} RSS (idle + per key x {KEYS_HELD / 1e6:g}M)",
        3.5,
        higher_is_better=False,
        unit="GB",
    ),
    Goal("restore_per_s", "state restore {limit}", 100_000, unit="records/s"),
)

# The Quix Streams peer (bench/peer.py) against the worker in the same run: its drain of the same
# topic, and the same paced stream served by each at these rates (bench/versus.py).
VERSUS_RATES = (5_000, 10_000)
# p99 at LATENCY_LOAD_SHARE in events the drain serves meanwhile (p99 x the drain's events/s); where
# the limit comes from: docs/performance.md, "Latency"
P99_DRAIN_EVENTS = 5_325
TARGETS += (
    Goal("drain_vs_peer", "drain {limit} the Quix Streams peer's", 7, unit="x"),
    *(
        Goal(
            f"p{q}_vs_peer_{rate}",
            f"at {rate:,} events/s offered, the worker's p{q} {{limit}} the peer's",
            1,
            False,
            "x",
        )
        for rate in VERSUS_RATES
        for q in (50, 99)
    ),
    Goal(
        "p99_drain_events",
        f"p99 at {LATENCY_LOAD_SHARE:.0%} load x the drain rate {{limit}}",
        P99_DRAIN_EVENTS,
        higher_is_better=False,
        unit="events",
    ),
)


def goal(figure: str) -> Goal:
    return next(g for g in TARGETS if g.figure == figure)
