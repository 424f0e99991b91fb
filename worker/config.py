"""Worker configuration: one frozen, typed object, validated once, and the librdkafka dicts.

Every option comes from a CLI flag or an `LSTM_WORKER_<OPTION>` environment variable
(flags win). librdkafka settings pass through as `-X key=value` or as
`LSTM_WORKER_KAFKA_<KEY>` (dots as underscores, e.g. LSTM_WORKER_KAFKA_SASL_MECHANISM).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from worker.errors import ConfigError

ENV_PREFIX = "LSTM_WORKER_"
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


def parse_kafka_overrides(pairs: list[str], environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Merge `LSTM_WORKER_KAFKA_*` variables and `-X key=value` flags (flags win)."""
    merged: dict[str, str] = {}
    given_as: dict[str, str] = {}  # key -> how the user gave it, for the refusal message
    for name, value in environ.items():
        if name.startswith(KAFKA_ENV_PREFIX) and len(name) > len(KAFKA_ENV_PREFIX):
            key = name[len(KAFKA_ENV_PREFIX) :].lower().replace("_", ".")
            merged[key] = value
            given_as[key] = f"{name} ({key})"
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            # never echo what may be a secret: a value after an empty key, or a secret's name run into it
            shown = "'=...'" if sep else ("<a secret setting, hidden>" if is_secret(pair) else repr(pair))
            raise ConfigError(f"-X {shown}: expected key=value, e.g. -X security.protocol=SASL_SSL")
        merged[key.strip()] = value
        given_as[key.strip()] = f"-X {key.strip()}"
    # keys only, never a value: a refused key is no secret, its value may be
    refused = sorted(k for k in merged if k.lower() in PROTOCOL_KAFKA_KEYS)
    if refused:
        reasons = (f"{given_as[k]}: set by the worker ({PROTOCOL_KAFKA_KEYS[k.lower()]}); remove it" for k in refused)
        raise ConfigError("; ".join(reasons))
    return tuple(sorted(merged.items()))


# a setting whose name contains one of these holds a secret (passwords, keys, tokens)
_SECRET_WORDS = ("password", "passphrase", "secret", "token", "sasl.oauthbearer.config", "key.pem", "private.key")
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
            # an outage is waited out with backoff: librdkafka's re-bootstrap (its default since
            # 2.10) loops while every broker is down: a new thread and a failed connection many
            # times a second per client, each an ERROR line (README: "Reconnection backs off");
            # without it the known brokers are retried, reconnect.backoff.ms doubling to 10 s
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
            # no compression: most bytes are state records, float32 that lz4 cannot shrink, and
            # compressing them cost the broker and the worker enough to take live p50 latency
            # from 29 ms to 110 ms at 10,000 events/s (a throwaway run, BENCHMARKS.md analysis);
            # -X compression.type=lz4 still turns it on
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


# step kernels of the streaming twin; "auto" is numpy when the model has a NumPy form, else tf
BACKENDS = ("auto", "numpy", "tf", "xla")

# Default time between commit points, per processing guarantee. At least once, every active
# key's state (2.4 KB for the reference model) is written once per commit point, and the loop
# pays for those records in the next second (the rounds that take their rows produce them):
# 30 s as Kafka Streams' at-least-once default. At 1 s and 10,000 keys that was 24 MB/s of state
# records and a live worker at 12,000 events/s fell behind; at 5 s, in live runs at 25,500
# events/s, 79 % of the events over 50 ms came in the second after a commit point (throwaway
# runs, BENCHMARKS.md analysis). The cost of a longer interval is the replay after a crash
# (duplicate predictions, identical values). Exactly once, outputs are visible only at the
# transaction's commit, so the interval is the latency floor: 1 s.
COMMIT_INTERVAL_MS = {"at_least_once": 30000, "exactly_once_v2": 1000}


@dataclass(frozen=True)
class RunConfig:
    """Everything `lstm-worker run` needs, validated at construction."""

    kafka: KafkaConfig
    model_path: str
    input_topic: str
    output_topic: str
    state_topic: str
    dlq_topic: str
    group_id: str = "lstm-worker"
    max_batch_keys: int = 1024
    max_delay_ms: int = 5
    max_steps: int = 16
    cache_keys: int = 100_000
    commit_interval_ms: int | None = None  # None: COMMIT_INTERVAL_MS of the guarantee
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9100
    max_event_bytes: int = 1_048_576
    poll_batch: int = 4096
    group_instance_id: str | None = None
    on_model_mismatch: str = "reset"
    processing_guarantee: str = "at_least_once"
    state_ttl_s: float = 0.0
    features: int = 0  # what producers send; 0: whatever the model takes
    backend: str = "auto"  # one of BACKENDS
    shutdown_timeout_s: float = 30.0  # after SIGTERM; below the orchestrators' grace periods (60 s)
    replication_factor: int = 0  # of the topics the worker creates; 0: the input topic's

    def __post_init__(self) -> None:
        positive = {
            "--max-batch-keys": self.max_batch_keys,
            "--max-steps": self.max_steps,
            "--cache-keys": self.cache_keys,
            "--max-event-bytes": self.max_event_bytes,
            "--poll-batch": self.poll_batch,
        }
        if self.commit_interval_ms is not None:
            positive["--commit-interval-ms"] = self.commit_interval_ms
        for flag, value in positive.items():
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        if self.on_model_mismatch not in ("reset", "fail"):
            raise ConfigError(f"--on-model-mismatch must be reset or fail, got {self.on_model_mismatch!r}")
        if self.processing_guarantee not in ("at_least_once", "exactly_once_v2"):
            raise ConfigError(
                f"--processing-guarantee must be at_least_once or exactly_once_v2, got {self.processing_guarantee!r}"
            )
        if self.state_ttl_s < 0:
            raise ConfigError(f"--state-ttl must be 0 (keep states forever) or more seconds, got {self.state_ttl_s}")
        if self.replication_factor < 0:
            raise ConfigError(
                f"--replication-factor must be 0 (the input topic's) or a replica count, got {self.replication_factor}"
            )
        if not self.shutdown_timeout_s > 0:  # also refuses NaN
            raise ConfigError(f"--shutdown-timeout-s must be more than 0 seconds, got {self.shutdown_timeout_s}")
        if self.features < 0:
            raise ConfigError(f"--features must be 0 (the model's) or the events' feature count, got {self.features}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.max_delay_ms < 0:
            raise ConfigError(f"--max-delay-ms must be 0 or more, got {self.max_delay_ms}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port must be 0..65535 (0 = no endpoint), got {self.metrics_port}")
        topics = [self.input_topic, self.output_topic, self.state_topic, self.dlq_topic]
        if len(set(topics)) != len(topics):
            raise ConfigError("input, output, state and dead-letter topics must all differ, got " + ", ".join(topics))
        if not os.path.exists(self.model_path):
            raise ConfigError(f"--model {self.model_path!r}: no such file; make one with `lstm-worker make-model`")

    @property
    def commit_interval_s(self) -> float:
        interval = self.commit_interval_ms or COMMIT_INTERVAL_MS.get(self.processing_guarantee, 1000)
        return interval / 1000.0

    @property
    def round_keys(self) -> int:
        """Keys per round: a round's states must all fit in the cache at once."""
        return min(self.max_batch_keys, self.cache_keys)
