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
    """A produce failed for good; carries the KafkaError so callers can tell retriable from fatal."""

    def __init__(self, topic: str, kafka_error: Any) -> None:
        super().__init__(f"delivery to topic {topic!r} failed: {kafka_error}")
        self.topic = topic
        self.kafka_error = kafka_error


class TopicError(WorkerError):
    """A topic is missing, cannot be created, or is not laid out as the worker needs."""
