"""The benchmark (`python -m bench`, `make bench`): one run into BENCHMARKS.md with PNG plots.

Not part of the worker: not installed with it, not in its image; it imports `worker`, never
the other way round.

kernel.py   parts 1-2: the step kernel per backend and round size, the source post's four approaches
drain.py    parts 3 and 6: one, then two worker processes drain a pre-loaded topic
latency.py  part 4: latency at half and at a quarter of the drain rate
versus.py   part 4: the worker and the Quix Streams peer on the same paced stream
peer.py     the Quix Streams peer (its own venv, `make peer`); peer_step.py: its NumPy step and records;
            peer_run.py: its weights, processes and drain
state.py    part 5: restore of a state topic, RSS per resident key, cold misses
kafka_io.py the benchmark's topics, fast producing, predictions read back (log-append times)
process.py  worker processes under test;  scrape.py: their metrics and /proc
stats.py    percentiles, interpolation, phase shares, a target's verdict
results.py  what one run measured
report.py   BENCHMARKS.md;  plots.py: its PNGs
run.py      one run in order;  __main__.py: its command line

Importing this package loads neither TensorFlow nor Kafka; `write_benchmarks` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.results import BenchResults
    from bench.run import BenchOptions
    from worker.config import KafkaConfig

__all__ = ["write_benchmarks"]


def write_benchmarks(options: BenchOptions, kafka: KafkaConfig | None = None) -> BenchResults:
    """Run the benchmark (parts 3-6 only with `kafka`) and write `options.out`."""
    from bench.run import write_benchmarks as write

    return write(options, kafka)
