"""`lstm-worker` command line: run, produce, make-model, verify.

Every option also reads `LSTM_WORKER_<OPTION>` (upper case, dashes as underscores);
a flag given on the command line wins. librdkafka settings: `-X key=value`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaException

from worker.config import BACKENDS, ENV_PREFIX, KafkaConfig, RunConfig, parse_kafka_overrides, redact_text
from worker.errors import ConfigError, WorkerError
from worker.heap import keep_freed_memory

log = logging.getLogger(__name__)


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


class _Parser(argparse.ArgumentParser):
    """Reports bad environment values only for the subcommand actually run."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        problems = getattr(parsed, "env_problems", None)
        if problems:
            self.error("; ".join(problems))
        return parsed


def _option(
    parser: argparse.ArgumentParser,
    flag: str,
    kind: Callable[[str], Any] = str,
    default: Any = None,
    required: bool = False,
    **kwargs: Any,
) -> None:
    """A flag whose default comes from its environment variable, else `default`."""
    env = _env_name(flag)
    raw = os.environ.get(env)
    if raw is not None:
        problems = parser.get_default("env_problems") or []
        try:
            default = kind(raw)
            if "choices" in kwargs and default not in kwargs["choices"]:
                raise ValueError(raw)
        except (TypeError, ValueError):
            choices = f" (one of {', '.join(kwargs['choices'])})" if "choices" in kwargs else ""
            problems.append(f"{env}={raw!r} is not a valid value for {flag}{choices}")
        parser.set_defaults(env_problems=problems)
        required = False
    help_text = kwargs.pop("help", "")
    suffix = f" [env {env}" + (f", default {default}]" if default is not None and raw is None else "]")
    parser.add_argument(flag, type=kind, default=default, required=required, help=help_text + suffix, **kwargs)


def _kafka_options(parser: argparse.ArgumentParser) -> None:
    _option(parser, "--bootstrap-servers", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument(
        "-X",
        dest="kafka_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting, e.g. -X security.protocol=SASL_SSL [env LSTM_WORKER_KAFKA_<KEY>]",
    )


def _kafka(args: argparse.Namespace) -> KafkaConfig:
    return KafkaConfig(args.bootstrap_servers, parse_kafka_overrides(args.kafka_settings, os.environ))


def _given_kafka_settings(args: argparse.Namespace) -> dict[str, str]:
    """The -X / LSTM_WORKER_KAFKA_* settings, whose secret values no printed message may contain."""
    try:
        return dict(parse_kafka_overrides(getattr(args, "kafka_settings", []), os.environ))
    except ConfigError:  # its message quotes no value
        return {}


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run one consumer-group member")
    _kafka_options(p)
    _option(p, "--model", required=True, help="Keras model file (.keras)")
    _option(p, "--input-topic", required=True, help="events topic")
    _option(p, "--output-topic", required=True, help="predictions topic (created if missing)")
    _option(p, "--state-topic", help="compacted state topic (default INPUT.state)")
    _option(p, "--dlq-topic", help="dead-letter topic (default INPUT.dlq)")
    _option(
        p,
        "--replication-factor",
        int,
        0,
        help="replicas of the output, state and dead-letter topics the worker creates (0: the input topic's)",
    )
    _option(p, "--group-id", default="lstm-worker", help="consumer group")
    _option(p, "--max-batch-keys", int, 1024, help="keys per model round")
    _option(p, "--max-delay-ms", int, 5, help="how long the oldest pending event may wait for a fuller round")
    _option(p, "--max-steps", int, 16, help="steps per key per round")
    _option(
        p, "--cache-keys", int, 100_000, help="states kept in memory (LRU); the rest are read back from the state topic"
    )
    _option(
        p,
        "--commit-interval-ms",
        int,
        help="time between commit points (default 30000 at least once, 1000 exactly once)",
    )
    _option(p, "--metrics-host", default="0.0.0.0", help="bind address of /metrics, /healthz, /readyz")
    _option(p, "--metrics-port", int, 9100, help="port of /metrics, /healthz, /readyz (0: none)")
    _option(
        p,
        "--features",
        int,
        0,
        help="numbers per event the producers send; a model of another count is refused at start (0: the model's)",
    )
    _option(
        p,
        "--backend",
        default="auto",
        choices=list(BACKENDS),
        help="step kernel: numpy (no per-call framework cost), tf, xla; auto: numpy when every layer has a NumPy form",
    )
    _option(p, "--max-event-bytes", int, 1_048_576, help="larger events go to the dead-letter topic (too_large)")
    _option(p, "--poll-batch", int, 4096, help="records per consume() call")
    _option(
        p,
        "--group-instance-id",
        help="static group membership: a restart within the session timeout keeps the partitions",
    )
    _option(
        p,
        "--on-model-mismatch",
        default="reset",
        choices=["reset", "fail"],
        help="a stored state of another model: start that key from zero (counted), or stop",
    )
    _option(
        p,
        "--processing-guarantee",
        default="at_least_once",
        choices=["at_least_once", "exactly_once_v2"],
        help="exactly_once_v2: predictions, states and offsets commit in one transaction",
    )
    _option(
        p,
        "--state-ttl",
        float,
        0.0,
        dest="state_ttl_s",
        help="seconds of stream time after which an idle key's state is deleted; 0: never",
    )
    _option(
        p,
        "--shutdown-timeout-s",
        float,
        30.0,
        help="after SIGTERM/SIGINT, seconds to finish the round, flush and commit; past it the worker exits 75 "
        "without committing what the brokers did not acknowledge (keep it below the orchestrator's grace period)",
    )
    _option(p, "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")


def _add_make_model(sub: Any) -> None:
    p = sub.add_parser("make-model", help="write the reference model (4 -> LSTM 100 -> LSTM 200 -> Dense 1)")
    _option(p, "--out", required=True, help="output .keras path")
    _option(p, "--features", int, 4, help="input features per event")
    _option(p, "--units", default="100,200", help="units of each recurrent layer, comma-separated")
    _option(p, "--cell", default="lstm", choices=["lstm", "gru", "simple"], help="recurrent cell")
    _option(p, "--seed", int, 0, help="weight seed")


def _add_produce(sub: Any) -> None:
    p = sub.add_parser("produce", help="produce synthetic events, keys shuffled together")
    _kafka_options(p)
    _option(p, "--topic", required=True, help="events topic (created with --partitions if missing)")
    _option(p, "--keys", int, 100, help="distinct keys")
    _option(p, "--events-per-key", int, 50, help="events per key")
    _option(p, "--features", int, 4, help="features per event")
    _option(p, "--rate", float, 0.0, help="events per second (0: as fast as possible)")
    _option(p, "--seed", int, 0, help="random seed of values and interleaving")
    _option(p, "--partitions", int, 4, help="partitions when the topic is created")
    _option(p, "--x-format", default="bytes", choices=["bytes", "list"], help="x as float32 bytes or a list")


def _add_verify(sub: Any) -> None:
    p = sub.add_parser("verify", help="check every prediction against the model on the full history")
    _kafka_options(p)
    _option(p, "--model", required=True, help="the Keras model file the workers serve")
    _option(p, "--input-topic", required=True, help="events topic")
    _option(p, "--output-topic", required=True, help="predictions topic")
    _option(p, "--tolerance", float, 1e-5, help="largest accepted absolute difference")
    _option(p, "--timeout-s", float, 60.0, help="give up when no new prediction arrived for this long")
    _option(p, "--plot", help="also write a PNG of a few keys' streaming vs full-history predictions (needs [demo])")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lstm-worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_make_model, _add_produce, _add_verify):
        add(sub)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from worker.shutdown import stop_signals_blocked

    # before any client or library starts a thread: every thread inherits the mask, and only
    # the stop-signal thread takes SIGTERM/SIGINT, whatever the loop is blocked in
    with stop_signals_blocked():
        return _run_worker(args)


def _run_worker(args: argparse.Namespace) -> int:
    from worker.kafka.access import check_client_access

    derived = {"kafka", "model_path", "state_topic", "dlq_topic"}
    config = RunConfig(
        kafka=_kafka(args),
        model_path=args.model,
        state_topic=args.state_topic or f"{args.input_topic}.state",
        dlq_topic=args.dlq_topic or f"{args.input_topic}.dlq",
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if f.name not in derived},
    )
    log.info("configuration: %r", config)  # KafkaConfig's repr hides secrets
    # wrong credentials or a missing group ACL stop the worker in a second, before TensorFlow loads
    check_client_access(config.kafka, config.group_id)
    if not keep_freed_memory():  # before the imports and TensorFlow allocate
        log.info("heap thresholds left as they are (not glibc, or set in the environment)")
    from worker.app import Worker
    from worker.metrics import HealthServer, Metrics
    from worker.model import StreamingTwin, check_features, fingerprint, load_model
    from worker.shutdown import StopSignals
    from worker.watchdog import WATCHDOG

    model = load_model(config.model_path)
    twin = StreamingTwin.from_model(model, config.backend)
    check_features(twin.features, config.features, config.model_path)
    metrics = Metrics()
    WATCHDOG.start()  # from here every blocking client call is bounded (worker/watchdog.py)
    worker = Worker(config, twin, fingerprint(model), metrics)
    server = None
    if config.metrics_port:
        server = HealthServer(metrics, worker.ready, config.metrics_host, config.metrics_port)
        server.start()
    # a signal that came during the start-up was pending: it stops the worker at once
    StopSignals(config.shutdown_timeout_s).start(worker.stop)
    try:
        worker.run()
    finally:
        if server is not None:
            server.stop()
    return 0


def _cmd_make_model(args: argparse.Namespace) -> int:
    from worker.model import fingerprint
    from worker.model.reference import make_reference_model, save_model

    try:
        units = [int(u) for u in args.units.split(",")]
    except ValueError as exc:
        raise WorkerError(f"--units {args.units!r}: expected comma-separated integers, e.g. 100,200") from exc
    model = make_reference_model(features=args.features, units=units, cell=args.cell, seed=args.seed)
    save_model(model, args.out)
    print(f"model written: {args.out} fingerprint={fingerprint(model)} params={model.count_params()}")
    return 0


def _cmd_produce(args: argparse.Namespace) -> int:
    from worker.synthetic import produce_synthetic

    sent = produce_synthetic(
        _kafka(args),
        topic=args.topic,
        keys=args.keys,
        events_per_key=args.events_per_key,
        features=args.features,
        rate=args.rate,
        seed=args.seed,
        partitions=args.partitions,
        x_format=args.x_format,
    )
    print(
        f"produced {sent.records} events for {args.keys} keys to {args.topic} in {sent.seconds:.2f} s "
        f"({sent.per_s:,.0f} events/s)"
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from worker.plot import PredictionTrace, plot_trace, require_matplotlib
    from worker.verify import verify

    if args.plot:
        require_matplotlib()
    trace = PredictionTrace() if args.plot else None
    report = verify(
        _kafka(args),
        model_path=args.model,
        input_topic=args.input_topic,
        output_topic=args.output_topic,
        tolerance=args.tolerance,
        timeout_s=args.timeout_s,
        trace=trace,
    )
    print(json.dumps(report.as_dict()) if args.json else report.summary())
    if trace is not None:
        plot_trace(trace, args.plot)
    return 0 if report.ok else 1


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "make-model": _cmd_make_model,
    "produce": _cmd_produce,
    "verify": _cmd_verify,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The NumPy step kernel's products on one BLAS thread (read when NumPy loads, which no
    # import above does): two threads drained no faster on 2 cores and took 1.7 cores, not 1.0
    # (throwaway drain runs, BENCHMARKS.md analysis)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        return _COMMANDS[args.command](args)
    except WorkerError as exc:
        message = redact_text(str(exc), _given_kafka_settings(args))
        print(f"lstm-worker {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KafkaException as exc:  # a refused authorization is a setting to fix, like the errors above
        from worker.kafka.access import authorization_failure

        refused = authorization_failure(exc, getattr(args, "group_id", None))
        if refused is None:
            raise
        print(
            f"lstm-worker {args.command}: error: {redact_text(refused, _given_kafka_settings(args))}", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
