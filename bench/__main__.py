"""`python -m bench`: the benchmark into BENCHMARKS.md and its PNGs (`make bench` runs it).

The benchmark is not part of the worker: it imports `worker` and starts `python -m worker run`
processes, and nothing of the worker imports it. Kafka settings as the worker takes them:
`-X key=value` and `LSTM_WORKER_KAFKA_<KEY>` (the workers under test read the same variables).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

from worker.config import KafkaConfig, parse_kafka_overrides, redact_text
from worker.errors import ConfigError, WorkerError
from worker.options import RUN


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the kernel, the source post's four approaches, drain, latency, state and scaling "
        "into BENCHMARKS.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--bootstrap-servers", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    p.add_argument(
        "-X",
        dest="kafka_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting, e.g. -X security.protocol=SASL_SSL (also LSTM_WORKER_KAFKA_<KEY>)",
    )
    p.add_argument("--out", default="BENCHMARKS.md", help="markdown file to write (PNGs go to bench/ beside it)")
    p.add_argument("--events", type=int, default=200, help="events (context length) of the per-event baselines")
    p.add_argument("--min-seconds", type=float, default=1.0, help="time each kernel round size at least this long")
    p.add_argument(
        "--drain-events", type=int, default=1_000_000, help="events pre-loaded for the drain and scaling parts"
    )
    p.add_argument("--drain-keys", type=int, default=10_000, help="keys of those events (and of the latency part)")
    p.add_argument("--partitions", type=int, default=12, help="partitions of every input topic of the benchmark")
    p.add_argument(
        "--latency-seconds",
        type=float,
        default=60.0,
        help="seconds of each latency run (1/2, then 1/4 of the drain rate)",
    )
    p.add_argument(
        "--versus-seconds",
        type=float,
        default=30.0,
        help="seconds of each latency run of the worker and of the Quix Streams peer at 5,000 and 10,000 events/s",
    )
    p.add_argument(
        "--peer-python",
        default=".cache/peer-venv/bin/python",
        help="python of the Quix Streams peer's venv (`make peer`); without it the peer's parts are skipped",
    )
    p.add_argument(
        "--state-keys", type=int, default=1_000_000, help="state records restored, and keys held, in the state part"
    )
    p.add_argument(
        "--cold-cache-keys", type=int, default=10_000, help="--cache-keys of the worker measuring cold misses"
    )
    p.add_argument(
        "--broker-warmup-seconds",
        type=float,
        default=80.0,
        help="live load on a throwaway topic before the drain, not counted: a fresh broker's JVM compiles "
        "its hot paths under its first minutes of load (0: none)",
    )
    p.add_argument(
        "--load-nice",
        type=int,
        default=10,
        help="nice value (0-19) of the latency parts' load generator, which stands for producers on other "
        "machines: the worker under test gets the cores first",
    )
    p.add_argument(
        "--broker-pid",
        type=int,
        help="pid of a local broker, whose nice value the report states (`make bench` starts its broker at "
        "nice BENCH_NICE, 10)",
    )
    p.add_argument("--workdir", default=".cache/bench", help="the reference model and the workers' logs")
    p.add_argument(
        "--schema-registry-url",
        help="Schema Registry (Confluent API) of part 3's Avro drain, e.g. http://127.0.0.1:8182/apis/ccompat/v7 "
        "(`make bench` starts one); without it that drain is skipped",
    )
    p.add_argument("--skip-kafka", action="store_true", help="parts 1-2 only (no broker needed)")
    return p


def _kafka_settings(args: argparse.Namespace) -> dict[str, str]:
    """The -X / LSTM_WORKER_KAFKA_* settings, whose secret values no printed message may contain."""
    try:
        return dict(parse_kafka_overrides(args.kafka_settings, os.environ))
    except ConfigError:  # its message quotes no value
        return {}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # as `lstm-worker` sets it before NumPy loads, from the workers' --step-threads: the kernel is
    # timed on the BLAS threads it is served with, and the workers under test inherit it
    threads = RUN["step_threads"]
    os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ.get(threads.env, str(threads.default)))
    from bench import write_benchmarks
    from bench.run import BenchOptions

    try:
        fields = {f.name for f in dataclasses.fields(BenchOptions)}
        options = BenchOptions(**{name: value for name, value in vars(args).items() if name in fields})
        kafka = None
        if not args.skip_kafka:
            kafka = KafkaConfig(args.bootstrap_servers, parse_kafka_overrides(args.kafka_settings, os.environ))
        write_benchmarks(options, kafka)
    except WorkerError as exc:
        print(f"bench: error: {redact_text(str(exc), _kafka_settings(args))}", file=sys.stderr)
        return 2
    print(f"benchmarks written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
