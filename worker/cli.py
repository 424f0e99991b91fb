"""`lstm-worker` command line: run, produce, make-model, verify.

Every option also reads `LSTM_WORKER_<OPTION>` (upper case, dashes as underscores);
a flag given on the command line wins. librdkafka settings: `-X key=value`.
The options are declared in worker/options.py; docs/configuration.md lists them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException

from worker.config import (
    KafkaConfig,
    RegistryConfig,
    RunConfig,
    parse_kafka_overrides,
    parse_registry_overrides,
    redact_text,
)
from worker.errors import ConfigError, WorkerError
from worker.heap import keep_freed_memory
from worker.options import (
    BOOTSTRAP_SERVERS,
    MAKE_MODEL_OPTIONS,
    PRODUCE_OPTIONS,
    REGISTRY_OPTIONS,
    RUN_OPTIONS,
    SCHEMA_REGISTRY_URL,
    VERIFY_OPTIONS,
    Option,
    env_name,
)

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

log = logging.getLogger(__name__)
_OVERLAP_SWITCH_INTERVAL_S = 5e-5  # seconds; the interpreter's default is 5e-3


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
    env = env_name(flag)
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


def _add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for o in options:
        choices = {"choices": list(o.choices)} if o.choices else {}
        _option(parser, o.flag, o.parse, o.default, o.required, dest=o.dest, help=o.help_line, **choices)


def _kafka_options(parser: argparse.ArgumentParser) -> None:
    _add_options(parser, [BOOTSTRAP_SERVERS])
    parser.add_argument(
        "-X",
        dest="kafka_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka setting, e.g. -X security.protocol=SASL_SSL [env LSTM_WORKER_KAFKA_<KEY>]",
    )


def _registry_options(parser: argparse.ArgumentParser) -> None:
    _add_options(parser, REGISTRY_OPTIONS)
    parser.add_argument(
        "-S",
        dest="registry_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Schema Registry client setting, e.g. -S basic.auth.user.info=USER:PASSWORD "
        "[env LSTM_WORKER_REGISTRY_<KEY>]",
    )


def _kafka(args: argparse.Namespace) -> KafkaConfig:
    return KafkaConfig(args.bootstrap_servers, parse_kafka_overrides(args.kafka_settings, os.environ))


def _registry(args: argparse.Namespace) -> RegistryConfig:
    return RegistryConfig(args.schema_registry_url, parse_registry_overrides(args.registry_settings, os.environ))


def _registry_client(args: argparse.Namespace, *formats: str | None) -> SchemaRegistryClient | None:
    """The checked registry client when a format is avro (exit 2 if it cannot be used), else None."""
    if "avro" not in formats:
        return None
    if not args.schema_registry_url:
        raise ConfigError(f"avro needs a Schema Registry: set {SCHEMA_REGISTRY_URL.flag} or {SCHEMA_REGISTRY_URL.env}")
    from worker.formats.registry import connect_registry

    return connect_registry(_registry(args))


def _given_secret_settings(args: argparse.Namespace) -> dict[str, str]:
    """The -X / LSTM_WORKER_KAFKA_* and -S / LSTM_WORKER_REGISTRY_* settings, whose secret values
    no printed message may contain."""
    given: dict[str, str] = {}
    for parse, dest in ((parse_kafka_overrides, "kafka_settings"), (parse_registry_overrides, "registry_settings")):
        with contextlib.suppress(ConfigError):  # its message quotes no value
            given.update(parse(getattr(args, dest, []), os.environ))
    return given


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="run one consumer-group member")
    _kafka_options(p)
    _registry_options(p)
    _add_options(p, RUN_OPTIONS)


def _add_make_model(sub: Any) -> None:
    p = sub.add_parser("make-model", help="write the reference model (4 -> LSTM 100 -> LSTM 200 -> Dense 1)")
    _add_options(p, MAKE_MODEL_OPTIONS)


def _add_produce(sub: Any) -> None:
    p = sub.add_parser("produce", help="produce synthetic events, keys shuffled together")
    _kafka_options(p)
    _registry_options(p)
    _add_options(p, PRODUCE_OPTIONS)


def _add_verify(sub: Any) -> None:
    p = sub.add_parser("verify", help="check every prediction against the model on the full history")
    _kafka_options(p)
    _registry_options(p)
    _add_options(p, VERIFY_OPTIONS)
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
    from worker.formats.registry import connect_registry
    from worker.kafka.access import check_client_access

    config = RunConfig.from_options(_kafka(args), vars(args), _registry(args))
    log.info("configuration: %r", config)  # KafkaConfig's and RegistryConfig's reprs hide secrets
    # wrong credentials or a missing group ACL stop the worker in a second, before TensorFlow loads
    check_client_access(config.kafka, config.group_id)
    avro = "avro" in (config.input_format, config.prediction_format)
    registry = connect_registry(config.registry) if avro else None  # RunConfig refused avro without a URL
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
    worker = Worker(config, twin, fingerprint(model), metrics, registry)
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
        value_format=args.format,
        registry=_registry_client(args, args.format),
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
        input_format=args.input_format,
        output_format=args.output_format,
        registry=_registry_client(args, args.input_format, args.output_format),
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
        level=getattr(args, "log_level", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The step's products on --step-threads BLAS threads, read when NumPy loads, which no import
    # above does (docs/performance.md, "Step threads"); a value below 1 is refused by RunConfig
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(getattr(args, "step_threads", 1)))
    if getattr(args, "step_overlap", "off") == "on":
        # the step's thread takes the GIL back between its layers: at the interpreter's default
        # switch interval it waited for the loop's Python each time (docs/performance.md, "Step overlap")
        sys.setswitchinterval(_OVERLAP_SWITCH_INTERVAL_S)
    try:
        return _COMMANDS[args.command](args)
    except WorkerError as exc:
        message = redact_text(str(exc), _given_secret_settings(args))
        print(f"lstm-worker {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KafkaException as exc:  # a refused authorization is a setting to fix, like the errors above
        from worker.kafka.access import authorization_failure

        refused = authorization_failure(exc, getattr(args, "group_id", None))
        if refused is None:
            raise
        print(
            f"lstm-worker {args.command}: error: {redact_text(refused, _given_secret_settings(args))}", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
