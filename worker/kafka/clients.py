"""The worker's Kafka clients, built in one place: each setting the worker chooses, with why.

Settings the protocol owns are listed in `worker.config.PROTOCOL_KAFKA_KEYS` (-X may not change
them); the tuning here is overridden by -X. docs/performance.md gives the longer reasons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from worker.config import RunConfig
from worker.kafka.access import STATE_READER_SUFFIX
from worker.kafka.output import OutputProducer, StateDelivered

OnCommit = Callable[[KafkaError | None, list[TopicPartition]], None]
# the longest the broker may hold the group consumer's fetch to gather events (docs/performance.md,
# "Latency at light load"): the fetch's share of every event's latency at light load
FETCH_WAIT_MAX_MS = 2
# predictions leave within this of their round, which librdkafka batches into one request per partition;
# state records (at least once) and transactions, whose latency nobody waits on, keep librdkafka's default
# (docs/performance.md, "Latency at light load")
PREDICTION_LINGER_MS = 1
STATE_LINGER_MS = 5


def group_consumer(config: RunConfig, on_commit: OnCommit) -> Consumer:
    """The group member: offsets committed by hand, assignments incremental."""
    kafka = config.kafka
    instance = {"group.instance.id": config.group_instance_id} if config.group_instance_id else {}
    return Consumer(
        kafka.consumer(
            config.group_id,
            on_commit=on_commit,
            **{
                # partitions that stay keep being processed through a rebalance
                "partition.assignment.strategy": "cooperative-sticky",
                # members learn of a rebalance at their next heartbeat, and a dead member stalls one
                # until its session times out: both short (heartbeats run on librdkafka's thread)
                "heartbeat.interval.ms": 1000,
                "session.timeout.ms": 10000,
                # the broker gathers a fetch for a moment: answered at the first byte, p99 was worse
                # (more, smaller fetches and rounds; docs/performance.md, "Latency at light load")
                "fetch.min.bytes": 65536,
                "fetch.wait.max.ms": FETCH_WAIT_MAX_MS,
                **instance,
            },
        )
    )


def state_reader_settings(config: RunConfig) -> dict[str, Any]:
    """The state topic's readers (restore, LRU misses): assign() only, committed records only."""
    return config.kafka.consumer(
        config.group_id + STATE_READER_SUFFIX,
        **{
            "fetch.wait.max.ms": 20,  # a fetch at a partition's end comes back soon: a read is not held up
            "isolation.level": "read_committed",  # states of aborted transactions are never read
            # large fetches for whole-partition reads, each below glibc's mmap threshold so that
            # its memory is reused (docs/performance.md, "Restore fetches")
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "fetch.max.bytes": 30 * 1000 * 1000,
            # librdkafka's default pause after a full prefetch queue stalls a restore that caught up
            # (docs/performance.md, "Restore fetches")
            "fetch.queue.backoff.ms": 10,
        },
    )


def transactional_id(config: RunConfig, fallback: str) -> str:
    """Stable across restarts with --group-instance-id, so that a restarted member fences its predecessor."""
    return f"{config.group_id}.{config.group_instance_id or fallback}"


Settings = dict[str, Any]


def output_settings(config: RunConfig, transactional: str | None = None) -> tuple[Settings, Settings | None]:
    """The output client's settings, and the state records' client's (None: one client for both)."""
    kafka = config.kafka
    if transactional is not None:  # outputs become visible at the commit, which sends what lingers
        return kafka.producer(**{"transactional.id": transactional, "linger.ms": STATE_LINGER_MS}), None
    # a broker outage is waited out: records never expire in the producer's queue
    return (
        kafka.producer(**{"message.timeout.ms": 0, "linger.ms": PREDICTION_LINGER_MS}),
        kafka.producer(**{"message.timeout.ms": 0, "linger.ms": STATE_LINGER_MS}),
    )


def output_producer(
    config: RunConfig, on_state_delivered: StateDelivered, transactional: str | None = None
) -> OutputProducer:
    """Idempotent; with `transactional` (an id) transactional, with a transaction open."""
    settings, states = output_settings(config, transactional)
    producer = OutputProducer(settings, config.state_topic, on_state_delivered, states)
    if transactional is not None:
        producer.init_transactions()
        producer.begin()
    return producer
