"""The worker loop: the one place where Kafka I/O and the model step meet.

poll -> decode (bad records to the dead-letter topic) -> batch by key -> resolve states
-> one batched model step -> predictions -> at commit points: flush predictions, write
dirty states, commit input offsets below the lowest unprocessed event once those states
are acknowledged.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
import uuid
from typing import TYPE_CHECKING

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from worker.batching import Batcher, Events
from worker.codec import dead_letter_headers
from worker.commit import CommitProtocol, Progress
from worker.commit.at_least_once import AtLeastOnce
from worker.commit.exactly_once import ExactlyOnce
from worker.config import RunConfig
from worker.formats import event_decoder, prediction_encoder
from worker.kafka.clients import group_consumer, output_producer, state_reader_settings, transactional_id
from worker.kafka.output import position
from worker.kafka.reader import TopicReader
from worker.kafka.topics import ensure_worker_topics
from worker.metrics import Metrics, PhaseClock
from worker.rounds import RoundRunner, StepModel
from worker.state.cache import EntityId, StateCache
from worker.state.restore import Restore
from worker.state.store import StateStore
from worker.watchdog import MARGIN_S, guard

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

log = logging.getLogger(__name__)
# state records per loop iteration while restoring, between polls (docs/performance.md, "Restore slices")
_RESTORE_SLICE = 20_000
_NO_KEY = ("no_key", "a record without a key cannot have state")
_GAUGES_EVERY_S = 2.0  # consumer lag and cache gauges between commit points (cached watermarks: no request)
_CLOSE_LIMIT_S = 60.0  # a client's close (a consumer's includes leaving the group)
_IDLE_WAIT_S = 0.2  # an idle poll's wait for its first record: how often an idle loop sees to commit points and stop


class Worker:
    """One consumer-group member. `run()` returns after `stop()` with everything committed."""

    def __init__(
        self,
        config: RunConfig,
        model: StepModel,
        fingerprint: str,
        metrics: Metrics,
        registry: SchemaRegistryClient | None = None,
    ) -> None:
        """`registry`: the Schema Registry client, for the avro formats (worker.formats.registry)."""
        self.config = config
        self.model = model
        self.fingerprint = fingerprint
        self.metrics = metrics
        self.partitions = ensure_worker_topics(
            AdminClient(config.kafka.admin()),
            input_topic=config.input_topic,
            output_topic=config.output_topic,
            state_topic=config.state_topic,
            dlq_topic=config.dlq_topic,
            replication_factor=config.replication_factor,
        )
        reader_settings = state_reader_settings(config)
        reader = TopicReader(reader_settings, config.state_topic)  # LRU misses
        self._restore_reader = TopicReader(reader_settings, config.state_topic)
        self._restore_job: Restore | None = None
        self._seek_back: dict[int, int] = {}
        cache = StateCache(config.cache_keys, model.state_dim)
        self.store = StateStore(
            cache,
            reader,
            model.state_sizes,
            fingerprint,
            metrics,
            config.on_model_mismatch,
            track_idle=bool(config.state_ttl_s),
        )
        progress = Progress(config.input_topic, config.state_topic, self._positions, lambda: self._assigned)
        self.commits: CommitProtocol
        if config.processing_guarantee == "exactly_once_v2":
            txn_id = transactional_id(config, uuid.uuid4().hex)
            new_producer = lambda: output_producer(config, self.store.delivered, txn_id)  # noqa: E731
            self.commits = ExactlyOnce(new_producer, self.store, progress, metrics, self._rewind)
        else:
            producer = output_producer(config, self.store.delivered)
            self.commits = AtLeastOnce(producer, self.store, progress, metrics, config.commit_interval_s)
        self.consumer = group_consumer(config, self.commits.on_commit)
        self.commits.consumer = self.consumer
        self.decoder = event_decoder(config.input_format, model.features, config.max_event_bytes, registry)
        self.batcher = Batcher(config.round_keys, config.max_steps)
        self._assigned: set[int] = set()
        self._restoring: set[int] = set()
        self._next_offset: dict[int, int] = {}
        self.clock = PhaseClock(metrics)
        encoder = prediction_encoder(
            config.prediction_format, model.output_dim, fingerprint, config.output_topic, registry
        )
        self.rounds = RoundRunner(
            model,
            self.store,
            config.output_topic,
            config.state_topic,
            encoder,
            metrics,
            self.clock,
            overlap=config.step_overlap == "on",
        )
        self._next_expiry = 0.0
        self._stopping = False
        self._failed = False
        self._joined = False
        self.rounds.warm_up()

    # -- lifecycle ------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish its round, commit and leave (safe from any thread: the stop-signal
        thread calls it while the loop may be blocked in a client call)."""
        self._stopping = True

    def ready(self) -> bool:
        return self._joined and not self._restoring

    def run(self) -> None:
        cfg = self.config
        self.consumer.subscribe(
            [cfg.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        log.info(
            "worker started group=%s input=%s partitions=%d model=%s",
            cfg.group_id,
            cfg.input_topic,
            self.partitions,
            self.fingerprint,
        )
        next_commit = time.monotonic() + cfg.commit_interval_s
        next_gauges = 0.0
        # TensorFlow's long-lived objects out of the collector's sight: full collections stalled the
        # loop (docs/performance.md, "Garbage collection")
        gc.collect()
        gc.freeze()
        try:
            clock, batcher = self.clock, self.batcher
            while not self._stopping:
                # one round per poll: a round's leftovers then share the next round with the
                # keys the poll brings; no polling while a round's worth of work is pending
                msgs = [] if batcher.backlogged() else self._poll()
                clock.lap("poll")
                # a round stepped meanwhile: its predictions leave now, not after this poll's decode
                self.rounds.collect(self.commits.producer, wait=False)
                if self._restoring:
                    self._advance_restore()
                    clock.lap("restore")
                self._accept(msgs)
                clock.lap("decode")
                if batcher.ready(caught_up=len(msgs) < cfg.poll_batch):
                    self._run_round()
                else:  # with nothing new to run, the round in flight's predictions leave as soon as it is done
                    self.rounds.collect(self.commits.producer, wait=not msgs)
                self.commits.producer.poll()
                self.commits.between_rounds()
                clock.lap("produce")
                now = time.monotonic()
                if now >= next_commit:
                    self._commit_point()
                    next_commit = time.monotonic() + cfg.commit_interval_s
                    clock.lap("commit")
                elif now >= next_gauges:  # the lag as it is, not as of the last commit point
                    self._update_gauges()
                    next_gauges = now + _GAUGES_EVERY_S
            self._commit_point(wait=True)
        except BaseException:
            self._failed = True  # leaving the group must not commit past what failed
            self.commits.failed()
            raise
        finally:
            self.rounds.close()
            if self._restore_job is not None:
                with guard("restore reader close", _CLOSE_LIMIT_S):
                    self._restore_job.close()
            with guard("consumer.close", _CLOSE_LIMIT_S):
                self.consumer.close()
            with guard("state reader close", _CLOSE_LIMIT_S):
                self.store.reader.close()
                self._restore_reader.close()
            log.info("worker stopped")

    def _poll(self) -> list[Message]:
        """What is fetched already; with nothing fetched and nothing else to do, wait for the first
        record only: a round never waits for more events (docs/performance.md, "Latency at light load")."""
        batch = self.config.poll_batch
        msgs = self.consumer.consume(num_messages=batch, timeout=0)
        if msgs or self._restoring or len(self.batcher) or self.rounds.in_flight:  # other work is waiting
            return msgs
        msgs = self.consumer.consume(num_messages=1, timeout=_IDLE_WAIT_S)
        if msgs:
            msgs.extend(self.consumer.consume(num_messages=batch - 1, timeout=0))
        return msgs

    # -- rebalance ------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Assign paused: no event of a partition is processed before its state is restored."""
        consumer.incremental_assign(partitions)
        consumer.pause(partitions)
        new = {tp.partition for tp in partitions}
        self._assigned |= new
        self._restoring |= new
        self._joined = True
        self.metrics.assigned_partitions.set(len(self._assigned))
        log.info("assigned partitions=%s", sorted(new))

    def _advance_restore(self) -> None:
        """One slice of the restore; partitions restored to the end resume."""
        self.rounds.finish(self.commits.producer)  # no restore beside a step in flight
        if self._restore_job is None:
            self._restore_job = Restore(
                self.store, self._restore_reader, sorted(self._restoring), self.metrics, self.commits.stable_offsets
            )
        if not self._restore_job.step(_RESTORE_SLICE):
            return
        done = self._restore_job.partitions & self._assigned
        self._restore_job = None
        self._restoring -= done
        for p in done & self._seek_back.keys():  # records that slipped through the pause
            offset = self._seek_back.pop(p)
            log.info("partition=%d: records fetched while restoring, read again from offset=%d", p, offset)
            self.consumer.seek(TopicPartition(self.config.input_topic, p, offset))
        self.consumer.resume([TopicPartition(self.config.input_topic, p) for p in sorted(done)])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what was processed, then forget the partitions' keys and pending events."""
        if not self._failed:
            self._commit_point(wait=True)
        self._forget({tp.partition for tp in partitions})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost (not revoked): another member may own them already, so write nothing."""
        log.warning("partitions lost=%s: dropping their unwritten state", sorted(tp.partition for tp in partitions))
        self._forget({tp.partition for tp in partitions})
        self.commits.lost()

    def _drop(self, partitions: set[int]) -> None:
        """Forget the partitions' in-memory state and pending events."""
        self.rounds.finish(self.commits.producer)  # a round in flight may hold their keys' rows
        for p in partitions:
            self.batcher.drop_partition(p)
            self.store.forget(p)
            self._next_offset.pop(p, None)
            self.rounds.stream_time.pop(p, None)
            self._seek_back.pop(p, None)
            if self._restore_job is not None:
                self._restore_job.cancel(p)

    def _forget(self, partitions: set[int]) -> None:
        self._drop(partitions)
        self.commits.forget(partitions)
        for p in partitions:
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(str(p))
        self._assigned -= partitions
        self._restoring -= partitions
        self.metrics.assigned_partitions.set(len(self._assigned))
        log.info("revoked partitions=%s", sorted(partitions))

    # -- events ---------------------------------------------------------------------

    def _accept(self, msgs: list[Message]) -> None:
        """Decode a poll's records together, into columns; bad ones go to the dead-letter topic.

        Each field is read for the whole poll with one `map` (docs/performance.md, "Events as columns")."""
        msgs = self._live(msgs)
        if not msgs:
            return
        partitions: list[int] = list(map(Message.partition, msgs))  # type: ignore[arg-type]
        offsets: list[int] = list(map(Message.offset, msgs))  # type: ignore[arg-type]
        last = dict(zip(partitions, offsets, strict=True))  # a partition's records come in offset order
        self._next_offset.update({p: offset + 1 for p, offset in last.items()})
        keys: list[bytes | None] = list(map(Message.key, msgs))
        decoded = self.decoder.decode(
            list(map(Message.value, msgs)), lambda indexes: [msgs[i].timestamp()[1] for i in indexes]
        )
        bad = {i: (error.reason, error.detail) for i, error in decoded.rejected}
        if None in keys:
            bad.update({i: _NO_KEY for i, key in enumerate(keys) if key is None})
        for i in sorted(bad):
            self._dead_letter(msgs[i], *bad[i])
        ids: list[EntityId] = list(zip(partitions, keys, strict=True))  # type: ignore[arg-type]  # None: dropped below
        events = Events(
            ids,
            np.array(partitions, dtype=np.int64),
            np.array(offsets, dtype=np.int64),
            decoded.ts,
            decoded.reset,
            decoded.end,
            decoded.x,
        )
        if bad:
            events = events.select(np.flatnonzero(decoded.ok & np.array([key is not None for key in keys])))
        self.batcher.add(events)

    def _live(self, msgs: list[Message]) -> list[Message]:
        """The records to process: errors raised or logged, records of partitions not assigned
        (fetched before a revoke) or still restoring (fetched despite the pause) left out."""
        partitions = set(map(Message.partition, msgs))
        if not any(map(Message.error, msgs)) and partitions <= self._assigned and not partitions & self._restoring:
            return msgs
        live = []
        for msg in msgs:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    if error.fatal():
                        raise KafkaException(error)
                    log.warning("consumer error: %s", error)
                continue
            p, offset = position(msg)
            if p not in self._assigned:  # the partition's new owner handles it
                continue
            if p in self._restoring:  # read again once restored
                self._seek_back[p] = min(offset, self._seek_back.get(p, offset))
                continue
            live.append(msg)
        return live

    def _dead_letter(self, msg: Message, reason: str, detail: str) -> None:
        p, offset = position(msg)
        headers = dead_letter_headers(reason, detail, msg.topic() or "", p, offset)
        self.commits.producer.produce(self.config.dlq_topic, msg.key(), msg.value(), p, headers)
        self.metrics.dead_letters.labels(reason).inc()
        self.metrics.events.labels("dead_letter").inc()
        log.info("dead letter reason=%s partition=%d offset=%d detail=%s", reason, p, offset, detail)

    # -- rounds ---------------------------------------------------------------------

    def _run_round(self) -> None:
        if self.store.cache.room() < self.batcher.max_keys:  # make room: dirty states written, durable
            self.rounds.finish(self.commits.producer)
            self.commits.make_room()
            self.clock.lap("commit")
        self.rounds.run(self.batcher.take(), self.commits.producer)

    # -- commit points --------------------------------------------------------------

    def _commit_point(self, wait: bool = False) -> None:
        """Predictions, then states, then offsets; `wait` when the partitions are about to go."""
        started = time.perf_counter()
        self.rounds.finish(self.commits.producer)  # every round's predictions and states, before they commit
        self.commits.commit_point(wait)
        self._expire_idle()
        self._update_gauges()
        self.metrics.commit_seconds.observe(time.perf_counter() - started)

    def _expire_idle(self) -> None:
        """--state-ttl: at most every tenth of the TTL (a scan of every key)."""
        ttl_s = self.config.state_ttl_s
        if not ttl_s or time.monotonic() < self._next_expiry:
            return
        self._next_expiry = time.monotonic() + max(1.0, ttl_s / 10)
        expired = self.store.expire(
            self.commits.producer,
            self.config.state_topic,
            int(ttl_s * 1000),
            self.rounds.stream_time,
            self.commits.committed,
            self.batcher.has,
        )
        if expired:
            log.info("expired idle keys=%d ttl_s=%s", expired, ttl_s)

    def _positions(self) -> dict[int, int]:
        """Per assigned partition with events consumed, the lowest event not processed yet."""
        pending = self.batcher.min_pending_offsets()
        return {p: pending.get(p, nxt) for p, nxt in self._next_offset.items() if p in self._assigned}

    def _rewind(self, partitions: set[int]) -> None:
        """Back to the committed offsets, paused until restored."""
        self._drop(partitions)
        if not partitions:
            return
        with guard("consumer.committed", 30.0 + MARGIN_S):
            committed = self.consumer.committed([TopicPartition(self.config.input_topic, p) for p in partitions], 30.0)
        self.consumer.pause(committed)
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self.consumer.seek(TopicPartition(self.config.input_topic, tp.partition, offset))
        self._restoring |= partitions

    def _update_gauges(self) -> None:
        """Cache sizes; per partition, the high watermark of the latest fetch (cached: no request)
        minus the consumer's position, which steps over transaction markers where the offset after
        the last record consumed would stay behind them."""
        cache = self.store.cache
        self.metrics.cache_keys.set(len(cache))
        self.metrics.cache_bytes.set(cache.nbytes)
        if not self._assigned:
            return
        topic = self.config.input_topic
        try:
            positions = self.consumer.position([TopicPartition(topic, p) for p in self._assigned])
        except KafkaException:
            return
        for tp in positions:
            try:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0 and tp.offset >= 0:
                self.metrics.consumer_lag.labels(str(tp.partition)).set(max(0, high - tp.offset))
