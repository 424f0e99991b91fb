"""`lstm-worker bench`: the benchmark of the benchmark issue, into BENCHMARKS.md with PNG plots.

kernel.py   parts 1-2: the step kernel per backend and round size, the source's baselines
drain.py    parts 3 and 6: one, then two worker processes drain a pre-loaded topic
latency.py  part 4: latency at half and at a quarter of the drain rate
state.py    part 5: restore of a state topic, RSS per resident key, cold misses
kafka_io.py the benchmark's topics, fast producing, predictions read back (log-append times)
process.py  worker processes under test;  scrape.py: their metrics and /proc
stats.py    percentiles, interpolation, phase shares, a target's verdict
results.py  what one run measured, and the issue's targets against it
report.py   BENCHMARKS.md;  plots.py: its PNGs
run.py      one run in order

Importing this package loads neither TensorFlow nor Kafka; `write_benchmarks` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.bench.results import BenchResults
    from worker.bench.run import BenchOptions
    from worker.config import KafkaConfig

__all__ = ["write_benchmarks"]


def write_benchmarks(options: BenchOptions, kafka: KafkaConfig | None = None) -> BenchResults:
    """Run the benchmark (parts 3-6 only with `kafka`) and write `options.out`."""
    from worker.bench.run import write_benchmarks as write

    return write(options, kafka)
