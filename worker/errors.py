"""Error hierarchy: one root, leaves that say what a user must fix."""

from __future__ import annotations

from typing import Any


class WorkerError(Exception):
    """Root of every error the worker raises on purpose."""


class ConfigError(WorkerError):
    """A setting is wrong; the message says which and how to fix it."""


class ModelError(WorkerError):
    """The model file cannot be served (unreadable, unsupported layer, wrong shape)."""


class CodecError(WorkerError):
    """A record cannot be decoded; `reason` is the dead-letter reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class KafkaDeliveryError(WorkerError):
    """A produce failed for good; carries the KafkaError so callers can tell retriable from fatal.

    `permanent`: producing the same record again would fail the same way (too large for the
    topic, not authorized, no such topic), so the worker must stop rather than commit past it.
    """

    def __init__(self, topic: str, kafka_error: Any, permanent: bool = False) -> None:
        hint = (
            "; the worker stops without committing past the record: fix the topic (its max.message.bytes, "
            "the worker's ACLs, its existence) and restart, the record is produced again"
            if permanent
            else ""
        )
        super().__init__(f"delivery to topic {topic!r} failed: {kafka_error}{hint}")
        self.topic = topic
        self.kafka_error = kafka_error
        self.permanent = permanent


class CacheFullError(WorkerError):
    """Every cached state is newer than the state topic: none can make room for a round's keys.

    The worker writes the cache's states before a round that would not fit, so this means the
    cache is too small for one round; the message names --cache-keys.
    """


class StuckClientError(WorkerError):
    """A Kafka client call did not return within its bound: the client must be replaced."""


class TopicError(WorkerError):
    """A topic is missing, cannot be created, or is not laid out as the worker needs."""


class ClusterError(WorkerError):
    """Kafka cannot be reached at start (wrong address, listener or security protocol)."""


class AuthError(ClusterError):
    """The cluster refused the worker's credentials (SASL) or its TLS handshake failed."""


class AccessError(WorkerError):
    """An ACL the worker needs is missing; the message names the resource and the operation."""


class RegistryError(WorkerError):
    """The Schema Registry cannot be used: unreachable, refusing the credentials or a schema."""
