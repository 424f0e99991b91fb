"""Worker configuration: one frozen, typed object, validated once, and the librdkafka dicts.

Every option comes from a CLI flag or an `LSTM_WORKER_<OPTION>` environment variable
(flags win), as declared in worker/options.py. librdkafka settings pass through as `-X key=value` or as
`LSTM_WORKER_KAFKA_<KEY>` (dots as underscores, e.g. LSTM_WORKER_KAFKA_SASL_MECHANISM).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from worker.errors import ConfigError
from worker.options import (
    COMMIT_INTERVAL_MS,
    ENV_PREFIX,
    RUN,
    SCHEMA_REGISTRY_URL,
    Backend,
    Format,
    Guarantee,
    OnModelMismatch,
    OnOff,
)

_LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
KAFKA_ENV_PREFIX = ENV_PREFIX + "KAFKA_"

_RECORD_EXPIRY = (
    "at least once waits out broker outages, so a queued record must never expire (0); exactly once, "
    "a record lives as long as its transaction: set transaction.timeout.ms instead"
)
# librdkafka settings the worker owns, each with why: -X or LSTM_WORKER_KAFKA_* may not change them.
# Every other key the worker sets is tuning that -X wins over (linger.ms, compression.type, fetch
# sizes and waits, session.timeout.ms, heartbeat.interval.ms, auto.offset.reset: where a new group
# starts, metadata.recovery.strategy, transaction.timeout.ms, queue.buffering.max.*).
PROTOCOL_KAFKA_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "bootstrap.servers": "given by --bootstrap-servers, which the start-up messages name",
        "group.id": "given by --group-id; the state readers' group id and the transactional ids derive from it",
        "group.instance.id": "given by --group-instance-id; the transactional id derives from it",
        "enable.auto.commit": "offsets are committed by hand, only once the outputs they cover are durable",
        "enable.auto.offset.store": "offsets are stored by hand, only once the outputs they cover are durable",
        "partition.assignment.strategy": "the rebalance handlers rely on incremental (cooperative-sticky) assignment",
        "isolation.level": "the state restore must never read aborted states",
        "enable.partition.eof": "the state readers find the end of a partition by it",
        "enable.idempotence": "a retried produce must not duplicate or reorder a partition's records",
        "acks": "a record counts as written only once every in-sync replica has it (all)",
        "request.required.acks": "alias of acks: a record counts as written only once every in-sync replica has it",
        "transactional.id": "derived from --group-id and --group-instance-id; exactly once fences stale members by it",
        "message.timeout.ms": _RECORD_EXPIRY,
        "delivery.timeout.ms": "alias of message.timeout.ms: " + _RECORD_EXPIRY,
        "delivery.report.only.error": "the state index needs every state record's delivery report",
        "on_delivery": "the worker's delivery callback tracks failures and the state records' offsets",
        "on_commit": "the worker's commit callback tracks the committed offsets",
        "error_cb": "the start-up check watches it for refused credentials and TLS handshakes",
        "logger": "librdkafka's log lines go through the worker's logging (--log-level, -X debug=...)",
    }
)


# Schema Registry client settings the worker owns (-S may not change them)
PROTOCOL_REGISTRY_KEYS: Mapping[str, str] = MappingProxyType(
    {"url": "given by --schema-registry-url, which the start-up messages name"}
)
REGISTRY_ENV_PREFIX = ENV_PREFIX + "REGISTRY_"


def _parse_overrides(
    pairs: list[str], environ: Mapping[str, str], *, env_prefix: str, flag: str, owned: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """Merge `<env_prefix><KEY>` variables and `<flag> key=value` flags (flags win); keys in
    `owned` are refused with their reasons."""
    merged: dict[str, str] = {}
    given_as: dict[str, str] = {}  # key -> how the user gave it, for the refusal message
    for name, value in environ.items():
        if name.startswith(env_prefix) and len(name) > len(env_prefix):
            key = name[len(env_prefix) :].lower().replace("_", ".")
            merged[key] = value
            given_as[key] = f"{name} ({key})"
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            # never echo what may be a secret: a value after an empty key, or a secret's name run into it
            shown = "'=...'" if sep else ("<a secret setting, hidden>" if is_secret(pair) else repr(pair))
            raise ConfigError(f"{flag} {shown}: expected key=value, e.g. {flag} {_EXAMPLES[flag]}")
        merged[key.strip()] = value
        given_as[key.strip()] = f"{flag} {key.strip()}"
    # keys only, never a value: a refused key is no secret, its value may be
    refused = sorted(k for k in merged if k.lower() in owned)
    if refused:
        reasons = (f"{given_as[k]}: set by the worker ({owned[k.lower()]}); remove it" for k in refused)
        raise ConfigError("; ".join(reasons))
    return tuple(sorted(merged.items()))


_EXAMPLES = {"-X": "security.protocol=SASL_SSL", "-S": "basic.auth.user.info=USER:PASSWORD"}


def parse_kafka_overrides(pairs: list[str], environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Merge `LSTM_WORKER_KAFKA_*` variables and `-X key=value` flags (flags win)."""
    return _parse_overrides(pairs, environ, env_prefix=KAFKA_ENV_PREFIX, flag="-X", owned=PROTOCOL_KAFKA_KEYS)


def parse_registry_overrides(pairs: list[str], environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Merge `LSTM_WORKER_REGISTRY_*` variables and `-S key=value` flags (flags win): settings of
    confluent-kafka's Schema Registry client, e.g. basic.auth.user.info."""
    return _parse_overrides(pairs, environ, env_prefix=REGISTRY_ENV_PREFIX, flag="-S", owned=PROTOCOL_REGISTRY_KEYS)


# a setting whose name contains one of these holds a secret (passwords, keys, tokens)
_SECRET_WORDS = (
    "password",
    "passphrase",
    "secret",
    "token",
    "sasl.oauthbearer.config",
    "key.pem",
    "private.key",
    "user.info",  # the registry client's basic.auth.user.info, USER:PASSWORD
)
REDACTED = "***"


def is_secret(key: str) -> bool:
    """Whether a librdkafka setting holds a secret that must never be logged or printed."""
    return any(word in key.lower() for word in _SECRET_WORDS)


def redact(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy safe to log: secrets replaced by '***', callbacks left out."""
    return {k: (REDACTED if is_secret(k) else v) for k, v in settings.items() if not callable(v)}


def redact_text(text: str, settings: Mapping[str, Any]) -> str:
    """`text` with the value of every secret setting replaced by '***' (e.g. an error message)."""
    secrets = sorted({str(v) for k, v in settings.items() if is_secret(k) and str(v)}, key=len, reverse=True)
    for secret in secrets:  # longest first: a secret that contains another is hidden whole
        text = text.replace(secret, REDACTED)
    return text


@dataclass(frozen=True)
class KafkaConfig:
    """How to reach the cluster: bootstrap servers plus pass-through librdkafka settings."""

    bootstrap_servers: str
    overrides: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        # what logs and tracebacks show of the configuration: never a password
        return f"KafkaConfig(bootstrap_servers={self.bootstrap_servers!r}, overrides={redact(dict(self.overrides))!r})"

    def common(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            # librdkafka's own log lines go through Python logging, formatted and filtered like ours
            "logger": _LIBRDKAFKA_LOG,
            # an outage is waited out with backoff, not in librdkafka's re-bootstrap loop
            # (docs/design.md, "Broker outages"); -X metadata.recovery.strategy=rebootstrap trades back
            "metadata.recovery.strategy": "none",
        }
        settings.update(self.overrides)
        return settings

    def producer(self, **extra: Any) -> dict[str, Any]:
        """Idempotent producer: retries cannot duplicate or reorder a partition's records."""
        settings = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            # no compression: most bytes are float32 state records that lz4 cannot shrink, and compressing
            # costs CPU (docs/performance.md, "Compression"); -X compression.type=lz4 turns it on
            "compression.type": "none",
        }
        settings.update(extra)
        settings.update(self.common())  # -X wins over the worker's tuning; protocol keys are refused at parse
        return settings

    def consumer(self, group_id: str, **extra: Any) -> dict[str, Any]:
        """Offsets are committed by hand only, after the outputs they cover are durable."""
        settings = {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
        }
        settings.update(extra)
        settings.update(self.common())  # -X wins over the worker's tuning; protocol keys are refused at parse
        return settings

    def admin(self) -> dict[str, Any]:
        return self.common()


@dataclass(frozen=True)
class RegistryConfig:
    """How to reach the Schema Registry (Avro): its URL plus pass-through client settings."""

    url: str | None = None
    overrides: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"RegistryConfig(url={self.url!r}, overrides={redact(dict(self.overrides))!r})"

    def client(self) -> dict[str, Any]:
        """confluent-kafka's SchemaRegistryClient configuration."""
        return {**dict(self.overrides), "url": self.url}


@dataclass(frozen=True)
class RunConfig:
    """Everything `lstm-worker run` needs, validated at construction against worker/options.py."""

    kafka: KafkaConfig
    model_path: str
    input_topic: str
    output_topic: str
    state_topic: str
    dlq_topic: str
    group_id: str = RUN["group_id"].default
    max_batch_keys: int = RUN["max_batch_keys"].default
    max_steps: int = RUN["max_steps"].default
    cache_keys: int = RUN["cache_keys"].default
    commit_interval_ms: int | None = RUN["commit_interval_ms"].default  # None: COMMIT_INTERVAL_MS of the guarantee
    metrics_host: str = RUN["metrics_host"].default
    metrics_port: int = RUN["metrics_port"].default
    max_event_bytes: int = RUN["max_event_bytes"].default
    poll_batch: int = RUN["poll_batch"].default
    group_instance_id: str | None = RUN["group_instance_id"].default
    on_model_mismatch: OnModelMismatch = RUN["on_model_mismatch"].default
    processing_guarantee: Guarantee = RUN["processing_guarantee"].default
    state_ttl_s: float = RUN["state_ttl_s"].default
    features: int = RUN["features"].default  # what producers send; 0: whatever the model takes
    backend: Backend = RUN["backend"].default
    step_threads: int = RUN["step_threads"].default  # read by worker/cli.py before NumPy loads
    step_overlap: OnOff = RUN["step_overlap"].default
    shutdown_timeout_s: float = RUN["shutdown_timeout_s"].default
    replication_factor: int = RUN["replication_factor"].default  # of the topics the worker creates
    input_format: Format = RUN["input_format"].default
    output_format: Format | None = RUN["output_format"].default  # None: the input's
    registry: RegistryConfig = RegistryConfig()

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in RUN:
                RUN[f.name].check(getattr(self, f.name))
        topics = [self.input_topic, self.output_topic, self.state_topic, self.dlq_topic]
        if len(set(topics)) != len(topics):
            raise ConfigError("input, output, state and dead-letter topics must all differ, got " + ", ".join(topics))
        for fmt, option in ((self.input_format, RUN["input_format"]), (self.prediction_format, RUN["output_format"])):
            if fmt == "avro" and not self.registry.url:
                raise ConfigError(
                    f"{option.flag} avro needs a Schema Registry: set {SCHEMA_REGISTRY_URL.flag} or "
                    f"{SCHEMA_REGISTRY_URL.env}"
                )
        if not os.path.exists(self.model_path):
            raise ConfigError(
                f"{RUN['model_path'].flag} {self.model_path!r}: no such file; make one with `lstm-worker make-model`"
            )

    @classmethod
    def from_options(
        cls, kafka: KafkaConfig, values: Mapping[str, Any], registry: RegistryConfig | None = None
    ) -> RunConfig:
        """The configuration of parsed `run` options (`values` by argparse dest); the state and
        dead-letter topics default to the input topic's name with .state and .dlq."""
        given = {f.name: values[RUN[f.name].dest] for f in fields(cls) if f.name in RUN}
        given["state_topic"] = given["state_topic"] or f"{given['input_topic']}.state"
        given["dlq_topic"] = given["dlq_topic"] or f"{given['input_topic']}.dlq"
        return cls(kafka=kafka, registry=registry or RegistryConfig(), **given)

    @property
    def prediction_format(self) -> Format:
        return self.output_format or self.input_format

    @property
    def commit_interval_s(self) -> float:
        interval = self.commit_interval_ms or COMMIT_INTERVAL_MS.get(self.processing_guarantee, 1000)
        return interval / 1000.0

    @property
    def round_keys(self) -> int:
        """Keys per round: a round's states must all fit in the cache at once."""
        return min(self.max_batch_keys, self.cache_keys)
