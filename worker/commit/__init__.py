"""The commit protocols: in what order predictions, states and input offsets become durable.

`Worker` calls one `CommitProtocol` and never asks which guarantee it runs. At least once
(`AtLeastOnce`) orders three steps by acknowledgement: predictions, then the states of their
events, then the input offsets past them. Exactly once (`ExactlyOnce`) puts all three in one
transaction. docs/design.md says why each order is safe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, TopicPartition

from worker.kafka.output import OutputProducer
from worker.metrics import Metrics
from worker.state.restore import StableOffsets
from worker.state.store import StateStore


@dataclass(frozen=True)
class Progress:
    """What the loop knows of its partitions, asked by the protocol at each commit."""

    input_topic: str
    state_topic: str
    positions: Callable[[], dict[int, int]]  # per assigned partition consumed: the lowest event not processed
    assigned: Callable[[], set[int]]


class CommitProtocol(ABC):
    """One guarantee's commit protocol. `producer` is the client every output goes through (it
    may be replaced: always ask for it); `committed` holds the confirmed input offsets."""

    producer: OutputProducer
    stable_offsets: StableOffsets | None = None  # what a restore waits for before it starts

    def __init__(self, store: StateStore, progress: Progress, metrics: Metrics) -> None:
        self.store = store
        self.progress = progress
        self.metrics = metrics
        self.committed: dict[int, int] = {}
        # the group member's consumer (its commit, committed and group metadata): set once it
        # exists, since it reports asynchronous commits to `on_commit`
        self.consumer: Consumer | None = None

    def _consumer(self) -> Consumer:
        assert self.consumer is not None, "the consumer is set before the loop runs"
        return self.consumer

    @abstractmethod
    def between_rounds(self) -> None:
        """Work spread over the loop's iterations (states produced in slices, say)."""

    @abstractmethod
    def make_room(self) -> None:
        """Every dirty state written and durable, so that its cache row may be reused."""

    @abstractmethod
    def commit_point(self, wait: bool) -> None:
        """Make what was processed durable; `wait`: all of it now (revoke, shutdown)."""

    @abstractmethod
    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The consumer's report of an asynchronous offset commit."""

    @abstractmethod
    def lost(self) -> None:
        """Partitions were lost (not revoked): nothing of them may be committed."""

    @abstractmethod
    def failed(self) -> None:
        """On the way out after a failure."""

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.committed.pop(p, None)
