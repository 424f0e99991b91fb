"""Every option of `lstm-worker run`, `produce`, `make-model` and `verify`, declared once.

Each `Option` names its flag, Python type (a `Literal` when it has choices), default, help and
accepted values; its environment variable derives from the flag. From these tables worker/cli.py
builds the parsers, worker/config.py takes RunConfig's defaults and validation, and
`python -m worker.options > docs/configuration.md` writes the reference.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args, get_origin

from worker.errors import ConfigError

ENV_PREFIX = "LSTM_WORKER_"

Guarantee = Literal["at_least_once", "exactly_once_v2"]
OnModelMismatch = Literal["reset", "fail"]
# step kernels of the streaming twin; "auto" is fused when numba imports and the model has a fused
# form, else numpy when it has a NumPy form, else tf
Backend = Literal["auto", "fused", "numpy", "tf", "xla"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
Cell = Literal["lstm", "gru", "simple"]
XFormat = Literal["bytes", "list"]
# the values of input and output topics (docs/wire-format.md); the state topic is always msgpack
Format = Literal["msgpack", "json", "avro"]
OnOff = Literal["on", "off"]

BACKENDS: tuple[Backend, ...] = get_args(Backend)

# Default time between commit points: at least once Kafka Streams' default, for less state traffic;
# exactly once short, as it is the outputs' latency floor (docs/performance.md, "Commit interval")
COMMIT_INTERVAL_MS: Mapping[Guarantee, int] = MappingProxyType({"at_least_once": 30000, "exactly_once_v2": 1000})


def env_name(flag: str) -> str:
    """The environment variable of a flag: `--max-steps` -> `LSTM_WORKER_MAX_STEPS`."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


@dataclass(frozen=True)
class Option:
    """One command-line option; its environment variable is `env_name(flag)`."""

    flag: str
    type: Any = str  # int, float, str, or a Literal of strings: the choices
    default: Any = None
    help: str = ""
    _: KW_ONLY
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # every accepted value is more than this
    accepts: str = ""  # `accepted` in words, when the bounds alone do not say what the values mean
    unset: str = ""  # what no value (default None) means, e.g. a name derived from another option
    case_insensitive: bool = False  # choices given in any case, kept upper case
    dest: str = ""  # argparse attribute; the flag's name with underscores when empty
    field: str = ""  # the RunConfig field it fills; `dest` when empty
    details: str = ""  # more for docs/configuration.md than fits a --help line

    def __post_init__(self) -> None:
        dest = self.dest or self.flag.lstrip("-").replace("-", "_")
        object.__setattr__(self, "dest", dest)
        object.__setattr__(self, "field", self.field or dest)

    @property
    def env(self) -> str:
        return env_name(self.flag)

    @property
    def choices(self) -> tuple[str, ...]:
        return get_args(self.type) if get_origin(self.type) is Literal else ()

    @property
    def parse(self) -> Callable[[str], Any]:
        """Turns a flag's or variable's text into a value (argparse's `type`)."""
        if self.choices:
            return str.upper if self.case_insensitive else str
        return self.type

    @property
    def help_line(self) -> str:
        """The --help text (worker/cli.py adds the variable and the default)."""
        return f"{self.help} (default {self.unset})" if self.unset else self.help

    @property
    def accepted(self) -> str:
        """The accepted values in words ("" for any value of the type)."""
        if self.accepts:
            return self.accepts
        if self.choices:
            if len(self.choices) == 2:
                return " or ".join(self.choices)
            return "one of " + ", ".join(self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"{self.minimum}..{self.maximum}"
        if self.minimum is not None:
            return "0 or more" if self.minimum == 0 else f"at least {self.minimum}"
        if self.above is not None:
            return f"more than {self.above}"
        return ""

    def check(self, value: Any) -> None:
        """Raise ConfigError naming the flag, its variable and what they accept, unless `value` is accepted."""
        if value is None and not self.required:
            return
        # NaN compares false with every bound, so a bounded option refuses it
        ok = (
            value in self.choices
            if self.choices
            else (
                (self.minimum is None or value >= self.minimum)
                and (self.maximum is None or value <= self.maximum)
                and (self.above is None or value > self.above)
            )
        )
        if not ok:
            shown = repr(value) if isinstance(value, str) else str(value)
            raise ConfigError(f"{self.flag} must be {self.accepted}, got {shown}: set {self.flag} or {self.env}")


BOOTSTRAP_SERVERS = Option("--bootstrap-servers", str, "127.0.0.1:9092", "Kafka bootstrap servers")
KAFKA_OPTIONS = (BOOTSTRAP_SERVERS,)  # with -X, which worker/cli.py adds beside them
SCHEMA_REGISTRY_URL = Option(
    "--schema-registry-url",
    help="Schema Registry (Confluent API) of the Avro schemas, e.g. http://registry:8081",
    unset="none; needed by avro",
    details="checked at start (unreachable or refused credentials: exit 2); its client's settings pass through -S",
)
REGISTRY_OPTIONS = (SCHEMA_REGISTRY_URL,)  # with -S, which worker/cli.py adds beside it
INPUT_FORMAT = Option(
    "--input-format",
    Format,
    "msgpack",
    "event values: msgpack, JSON objects, or Avro in the Schema Registry framing",
    details="the state topic stays msgpack whatever the format",
)
OUTPUT_FORMAT = Option("--output-format", Format, help="prediction values", unset="the input format")
FORMAT_OPTIONS = (INPUT_FORMAT, OUTPUT_FORMAT)

_COMMIT_DEFAULTS = (
    f"{COMMIT_INTERVAL_MS['at_least_once']} at least once, {COMMIT_INTERVAL_MS['exactly_once_v2']} exactly once"
)

RUN_OPTIONS = (
    Option(
        "--model",
        help="Keras model file (.keras)",
        required=True,
        field="model_path",
        details="loaded with safe_mode=True; must exist at start",
    ),
    Option(
        "--input-topic",
        help="events topic",
        required=True,
        details="must exist; its partition count is the group's parallelism",
    ),
    Option(
        "--output-topic",
        help="predictions topic (created if missing)",
        required=True,
        details="created with the input's partition count",
    ),
    Option(
        "--state-topic",
        help="compacted state topic",
        unset="INPUT.state",
        details="created compacted and co-partitioned; refused if its partition count differs or it is not compacted",
    ),
    Option("--dlq-topic", help="dead-letter topic", unset="INPUT.dlq"),
    Option(
        "--replication-factor",
        int,
        0,
        "replicas of the output, state and dead-letter topics the worker creates (0: the input topic's)",
        minimum=0,
        accepts="0 (the input topic's) or a replica count",
        details="more than the cluster's brokers is refused at start; min.insync.replicas stays the brokers' default",
    ),
    Option("--group-id", str, "lstm-worker", "consumer group"),
    Option("--max-batch-keys", int, 1024, "keys per model round", minimum=1, details="capped by --cache-keys"),
    Option("--max-steps", int, 16, "steps per key per round", minimum=1),
    Option(
        "--cache-keys",
        int,
        100_000,
        "states kept in memory (LRU); the rest are read back from the state topic",
        minimum=1,
    ),
    Option(
        "--commit-interval-ms",
        int,
        help="time between commit points",
        minimum=1,
        unset=_COMMIT_DEFAULTS,
        details="at least once, a longer interval means less state traffic but a longer replay after a crash; "
        "exactly once, outputs become visible at each commit, so the interval is their latency floor",
    ),
    Option("--metrics-host", str, "0.0.0.0", "bind address of /metrics, /healthz, /readyz"),
    Option(
        "--metrics-port",
        int,
        9100,
        "port of /metrics, /healthz, /readyz (0: none)",
        minimum=0,
        maximum=65535,
        accepts="0..65535 (0 = no endpoint)",
        details="a port already in use stops the worker at start (exit 2)",
    ),
    Option(
        "--features",
        int,
        0,
        "numbers per event the producers send; a model of another count is refused at start (0: the model's)",
        minimum=0,
        accepts="0 (the model's) or the events' feature count",
    ),
    Option(
        "--backend",
        Backend,
        "auto",
        "step kernel: fused (NumPy's products, each cell's element-wise part in one compiled pass), numpy "
        "(no per-call framework cost), tf, xla; auto: the first of fused, numpy, tf that serves every layer",
        details="fused compiles with numba at start, before joining the group, cached on disk; "
        "xla jit-compiles the TensorFlow graph; the kernel auto chose is logged at start",
    ),
    Option(
        "--step-threads",
        int,
        1,
        "cores the model step may use: its BLAS threads (OPENBLAS_NUM_THREADS, unless set)",
        minimum=1,
        details="one fits a pod of one or two cores, whose other core serves librdkafka's threads "
        '(docs/performance.md, "Step threads")',
    ),
    Option(
        "--step-overlap",
        OnOff,
        "on",
        "on: each round's model step runs on a thread of its own, beside the loop's polling, decoding "
        "and producing; off: on the loop's thread",
        details="the step releases the GIL (BLAS, the fused kernel), so a second core takes it while the "
        'loop serves Kafka; the default fits a pod of one or two cores (docs/performance.md, "Step overlap")',
    ),
    Option("--max-event-bytes", int, 1_048_576, "larger events go to the dead-letter topic (too_large)", minimum=1),
    Option("--poll-batch", int, 4096, "records per consume() call", minimum=1),
    Option(
        "--group-instance-id",
        help="static group membership: a restart within the session timeout keeps the partitions",
        details="librdkafka's group.instance.id; exactly once, the transactional id derives from it",
    ),
    Option(
        "--on-model-mismatch",
        OnModelMismatch,
        "reset",
        "a stored state of another model: start that key from zero (counted), or stop",
    ),
    Option(
        "--processing-guarantee",
        Guarantee,
        "at_least_once",
        "exactly_once_v2: predictions, states and offsets commit in one transaction",
        details="dead letters too, in one transaction per commit point",
    ),
    Option(
        "--state-ttl",
        float,
        0.0,
        "seconds of stream time after which an idle key's state is deleted; 0: never",
        minimum=0,
        accepts="0 (keep states forever) or more seconds",
        dest="state_ttl_s",
    ),
    Option(
        "--shutdown-timeout-s",
        float,
        30.0,
        "after SIGTERM/SIGINT, seconds to finish the round, flush and commit; past it the worker exits 75 "
        "without committing what the brokers did not acknowledge (keep it below the orchestrator's grace period)",
        above=0,
        accepts="more than 0 seconds",
    ),
    Option("--log-level", LogLevel, "INFO", "logging level", case_insensitive=True),
    *FORMAT_OPTIONS,
)
RUN: Mapping[str, Option] = MappingProxyType({option.field: option for option in RUN_OPTIONS})

MAKE_MODEL_OPTIONS = (
    Option("--out", help="output .keras path", required=True),
    Option("--features", int, 4, "input features per event"),
    Option("--units", str, "100,200", "units of each recurrent layer, comma-separated"),
    Option("--cell", Cell, "lstm", "recurrent cell"),
    Option("--seed", int, 0, "weight seed"),
)

PRODUCE_OPTIONS = (
    Option("--topic", help="events topic (created with --partitions if missing)", required=True),
    Option("--keys", int, 100, "distinct keys"),
    Option("--events-per-key", int, 50, "events per key"),
    Option("--features", int, 4, "features per event"),
    Option("--rate", float, 0.0, "events per second (0: as fast as possible)"),
    Option("--seed", int, 0, "random seed of values and interleaving"),
    Option("--partitions", int, 4, "partitions when the topic is created"),
    Option("--x-format", XFormat, "bytes", "msgpack events: x as float32 bytes or a list"),
    Option("--format", Format, "msgpack", "event values; avro registers the Event schema under TOPIC-value"),
)

VERIFY_OPTIONS = (
    Option("--model", help="the Keras model file the workers serve", required=True),
    Option("--input-topic", help="events topic", required=True),
    Option("--output-topic", help="predictions topic", required=True),
    Option("--tolerance", float, 1e-5, "largest accepted absolute difference"),
    Option("--timeout-s", float, 60.0, "give up when no new prediction arrived for this long"),
    Option("--plot", help="also write a PNG of a few keys' streaming vs full-history predictions (needs [demo])"),
    *FORMAT_OPTIONS,
)

# -- docs/configuration.md -------------------------------------------------------------------

REGENERATE = "python -m worker.options > docs/configuration.md"
_TYPE_NAMES: Mapping[Any, str] = MappingProxyType({int: "integer", float: "number", str: "string"})


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default_cell(option: Option) -> str:
    if option.required:
        return "required"
    if option.default is None:
        return _cell(option.unset) if option.unset else "none"
    return f"`{option.default}`"


def _accepted_cell(option: Option) -> str:
    if option.choices:
        return ", ".join(f"`{c}`" for c in option.choices) + (" (any case)" if option.case_insensitive else "")
    return _cell(option.accepted) or "any"


def options_table(options: tuple[Option, ...]) -> list[str]:
    """The markdown table of `options`: flag, variable, type, default, accepted values, meaning."""
    lines = ["| flag | environment | type | default | accepted | meaning |", "|---|---|---|---|---|---|"]
    for o in options:
        kind = "choice" if o.choices else _TYPE_NAMES[o.type]
        meaning = _cell(o.help + (f"; {o.details}" if o.details else ""))
        lines.append(f"| `{o.flag}` | `{o.env}` | {kind} | {_default_cell(o)} | {_accepted_cell(o)} | {meaning} |")
    return lines


def reference(refused_kafka_keys: Mapping[str, str], refused_registry_keys: Mapping[str, str]) -> str:
    """docs/configuration.md: every option's table, the -X and -S pass-through and the keys they refuse."""
    kafka_prefix = ENV_PREFIX + "KAFKA_"
    registry_prefix = ENV_PREFIX + "REGISTRY_"
    lines = [
        f"<!-- Generated from worker/options.py by `{REGENERATE}`; edit the tables there. -->",
        "# Configuration",
        "",
        f"Every option is a flag and an environment variable `{ENV_PREFIX}<OPTION>` (upper case, dashes as",
        f"underscores, e.g. `{RUN['max_batch_keys'].env}=512`); a flag given on the command line wins over its",
        "variable. A value of the wrong type or outside the choices, by flag or variable, stops the command with",
        "exit code 2 and a message naming it; so does a `run` value outside its accepted range, at start.",
        f"A variable is read by every command that has the option: `{env_name('--features')}` is `run`'s",
        "`--features` and `produce`'s. `python -m bench --help` lists the benchmark's options.",
        "",
        "## `lstm-worker run`",
        "",
        "INPUT is the value of `--input-topic`.",
        "",
        *options_table(KAFKA_OPTIONS + REGISTRY_OPTIONS + RUN_OPTIONS),
        "",
        "## librdkafka settings: `-X key=value` and `" + kafka_prefix + "<KEY>`",
        "",
        "`run`, `produce` and `verify` pass librdkafka settings through unchanged: `-X key=value` (repeatable)",
        f"or the variable `{kafka_prefix}<KEY>` with dots as underscores, e.g.",
        f"`{kafka_prefix}SECURITY_PROTOCOL=SASL_SSL`; a `-X` flag wins over a variable of the same key,",
        "a later `-X` over an earlier one. SASL and TLS need nothing else. Pass passwords as variables:",
        "a `-X` value is visible in the process list; a setting whose name holds a secret is shown as `***`",
        "in logs and messages.",
        "",
        "Tuning such as `linger.ms`, `compression.type`, `session.timeout.ms`, `transaction.timeout.ms` or",
        "`auto.offset.reset` passes and wins over the worker's own value. The keys below are set by the worker",
        "and refused (exit 2), each with its reason (`PROTOCOL_KAFKA_KEYS` in worker/config.py):",
        "",
        "| key | why the worker sets it |",
        "|---|---|",
        *(f"| `{key}` | {_cell(why)} |" for key, why in refused_kafka_keys.items()),
        "",
        "## Schema Registry client settings: `-S key=value` and `" + registry_prefix + "<KEY>`",
        "",
        "With Avro, `run`, `produce` and `verify` pass settings of confluent-kafka's Schema Registry client",
        f"through the same way: `-S key=value` or `{registry_prefix}<KEY>`, e.g.",
        f"`{registry_prefix}BASIC_AUTH_USER_INFO=user:password` (basic authentication), `-S ssl.ca.location=...`.",
        "An unknown key stops the command at start (exit 2). Refused, as the worker sets them:",
        "",
        "| key | why the worker sets it |",
        "|---|---|",
        *(f"| `{key}` | {_cell(why)} |" for key, why in refused_registry_keys.items()),
        "",
        "## `lstm-worker produce`",
        "",
        *options_table(KAFKA_OPTIONS + REGISTRY_OPTIONS + PRODUCE_OPTIONS),
        "",
        "## `lstm-worker make-model`",
        "",
        *options_table(MAKE_MODEL_OPTIONS),
        "",
        "## `lstm-worker verify`",
        "",
        "`--json` (no variable) prints the report as one JSON object.",
        "",
        *options_table(KAFKA_OPTIONS + REGISTRY_OPTIONS + VERIFY_OPTIONS),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    # imported here, not at the top: worker.config imports this module for RunConfig
    from worker.config import PROTOCOL_KAFKA_KEYS, PROTOCOL_REGISTRY_KEYS

    sys.stdout.write(reference(PROTOCOL_KAFKA_KEYS, PROTOCOL_REGISTRY_KEYS))


if __name__ == "__main__":
    main()
