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
from collections.abc import Mapping

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from worker.batching import Batcher, Events
from worker.codec import EventDecoder, dead_letter_headers
from worker.config import RunConfig
from worker.errors import KafkaDeliveryError, StuckClientError
from worker.kafka.access import STATE_READER_SUFFIX
from worker.kafka.output import OutputProducer, position
from worker.kafka.reader import TopicReader
from worker.kafka.topics import ensure_worker_topics
from worker.metrics import Metrics, PhaseClock
from worker.rounds import RoundRunner, StepModel
from worker.state.cache import EntityId, StateCache
from worker.state.restore import Restore
from worker.state.store import StateStore
from worker.watchdog import MARGIN_S, guard

log = logging.getLogger(__name__)
_RESTORE_SLICE = 20_000  # state records per loop iteration while restoring (about 0.2 s)
# at least once, the fewest state records produced per loop iteration after a commit point
# (~0.2 ms of encoding and producing, scaled from 512 at ~3 ms), so that the long iterations of a backlog still make
# progress; otherwise time paces them, all within half the commit interval. Writing a commit
# point's states at once stalled the loop 50-130 ms at 10,000 events/s over 10,000 keys, and
# 512 per iteration sent them in bursts of ~3 ms per iteration right after the commit point
# (p99 at 13,800 events/s live, throwaway runs on a machine whose noise was as large as the
# effect: 320 and 353 ms at 512; 109, 249, 787 and 2,584 ms at 64; 199 and 226 ms at 16)
_STATE_WRITE_SLICE = 32
_NO_KEY = ("no_key", "a record without a key cannot have state")
_GAUGES_EVERY_S = 2.0  # consumer lag and cache gauges between commit points (cached watermarks: no request)
_CLOSE_LIMIT_S = 60.0  # a client's close (a consumer's includes leaving the group)
_SYNC_COMMIT_LIMIT_S = 60.0  # a synchronous offset commit, which has no timeout of its own
_ABORT_ON_FAILURE_S = 10.0  # the best-effort abort of the open transaction on the way out after a failure


def transaction_offsets(
    positions: Mapping[int, int], committed: Mapping[int, int], carries_records: bool
) -> dict[int, int]:
    """The input offsets a transaction sends, per assigned partition: `positions` (the lowest
    event not processed yet, where known) that differ from `committed`; and when the transaction
    carries any record, every partition with a known position, changed or not. Sending offsets is
    what makes the group coordinator check the member's generation (KIP-447): without them a
    member that lost its partitions could still commit states, tombstones or dead letters for
    them. A transaction with no record and no changed offset has nothing to fence."""
    if carries_records:
        return {**committed, **positions}
    return {p: offset for p, offset in positions.items() if committed.get(p) != offset}


class Worker:
    """One consumer-group member. `run()` returns after `stop()` with everything committed."""

    def __init__(self, config: RunConfig, model: StepModel, fingerprint: str, metrics: Metrics) -> None:
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
        kafka = config.kafka
        # states of aborted transactions are never read (librdkafka's default, stated on purpose)
        reader_settings = kafka.consumer(
            config.group_id + STATE_READER_SUFFIX,
            **{
                "fetch.wait.max.ms": 20,
                "isolation.level": "read_committed",
                # a restore reads whole partitions of 2.4 KB records (the reference model):
                # 16 MB per partition and fetch, not 1 MB, reads them half again as fast
                "max.partition.fetch.bytes": 16 * 1024 * 1024,
                # librdkafka allocates each fetch response whole, and glibc maps one over 32 MB
                # fresh from the kernel: at 64 MB every page of the 2.4 GB a 1M-key restore reads
                # faulted (645,000 faults, the fetch thread's CPU 3.2-3.7 s); below 32 MB the
                # memory is reused (43,000-76,000 faults, 1.8-2.0 s; throwaway restores)
                "fetch.max.bytes": 30 * 1000 * 1000,
                # once its prefetch queue is over queued.min.messages, librdkafka waits this long
                # before fetching again: at the default 1 s a restore stalled whenever it caught
                # up with the queue (in-process restores of 200,000 2.4 KB states, a throwaway
                # script: ~36,000 records/s at 1 s, 45,000-74,000 at 10 ms)
                "fetch.queue.backoff.ms": 10,
            },
        )
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
        self._eos = config.processing_guarantee == "exactly_once_v2"
        self._transactional_id = f"{config.group_id}.{config.group_instance_id or uuid.uuid4().hex}"
        self.producer = self._new_producer()
        self.consumer = Consumer(
            kafka.consumer(
                config.group_id,
                on_commit=self._committed_offsets,
                **{
                    # incremental rebalances: partitions that stay keep being processed
                    "partition.assignment.strategy": "cooperative-sticky",
                    # members learn of a rebalance at their next heartbeat: keep that short; a member
                    # that died stalls a rebalance until its session times out (the group's other
                    # members wait for it): 10 s rather than 45 s. Heartbeats come from librdkafka's
                    # own thread, so a long model step never misses one. -X overrides both.
                    "heartbeat.interval.ms": 1000,
                    "session.timeout.ms": 10000,
                    # under live traffic a fetch that returns at the first byte is answered at
                    # once and sent again, one request per round trip, each costing the broker
                    # and the client CPU that the step needs (reasoned from librdkafka's fetch
                    # loop, not counted): let the broker gather up to 64 KB for at most 5 ms
                    # instead (throwaway runs at 13,000 events/s live on this noisy machine,
                    # p99: 85-3,881 ms with it, 95-12,281 ms without; the worker fell behind in
                    # one of four runs with it, two of four without). The price: ~200 fetches a
                    # second even when idle (README, Capacity planning: "Broker requests")
                    "fetch.min.bytes": 65536,
                    "fetch.wait.max.ms": 5,
                    **({"group.instance.id": config.group_instance_id} if config.group_instance_id else {}),
                },
            )
        )
        self.decoder = EventDecoder(model.features, config.max_event_bytes)
        self.batcher = Batcher(config.round_keys, config.max_steps, config.max_delay_ms)
        self._assigned: set[int] = set()
        self._restoring: set[int] = set()
        self._next_offset: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        self.clock = PhaseClock(metrics)
        self.rounds = RoundRunner(
            model, self.store, config.output_topic, config.state_topic, fingerprint, metrics, self.clock
        )
        self._next_expiry = 0.0
        self._commit_in_flight = False
        self._pending_offsets: list[TopicPartition] = []  # at least once: committed once their states are acked
        self._queued_at = 0.0  # when the last commit point queued its states
        self._stopping = False
        self._failed = False
        self._joined = False
        self.rounds.warm_up()

    def _new_producer(self) -> OutputProducer:
        """Idempotent; with exactly_once_v2 transactional, with a transaction open."""
        kafka = self.config.kafka
        if self._eos:
            settings = kafka.producer(**{"transactional.id": self._transactional_id})
        else:  # a broker outage is waited out: records never expire in the producer's queue
            settings = kafka.producer(**{"message.timeout.ms": 0})
        producer = OutputProducer(settings, self.config.state_topic, self.store.delivered)
        if self._eos:
            producer.init_transactions()
            producer.begin()
        return producer

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
        # TensorFlow and Keras leave ~300k long-lived objects; a full garbage collection walks
        # them all (150-500 ms, a latency spike every few seconds). They never become garbage:
        # move them out of the collector's sight.
        gc.collect()
        gc.freeze()
        try:
            clock, batcher, caught_up = self.clock, self.batcher, True
            while not self._stopping:
                # one round per poll: a round's leftovers then share the next round with the
                # keys the poll brings; no polling while a round's worth of work is pending
                msgs = [] if batcher.backlogged() else self._poll(round_due=caught_up and len(batcher) > 0)
                clock.lap("poll")
                if self._restoring:
                    self._advance_restore()
                    clock.lap("restore")
                self._accept(msgs)
                clock.lap("decode")
                caught_up = len(msgs) < cfg.poll_batch
                if batcher.ready(time.monotonic(), caught_up):
                    self._run_round()
                self.producer.poll()
                if not self._eos:
                    share = (time.monotonic() - self._queued_at) / (cfg.commit_interval_s / 2)
                    self.store.write_queued_share(self.producer, cfg.state_topic, share, _STATE_WRITE_SLICE)
                    self._commit_acknowledged()
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
            if self._eos:  # read_committed readers would otherwise wait for the transaction's timeout
                self.producer.abort_open(_ABORT_ON_FAILURE_S)
            raise
        finally:
            if self._restore_job is not None:
                with guard("restore reader close", _CLOSE_LIMIT_S):
                    self._restore_job.close()
            with guard("consumer.close", _CLOSE_LIMIT_S):
                self.consumer.close()
            with guard("state reader close", _CLOSE_LIMIT_S):
                self.store.reader.close()
                self._restore_reader.close()
            log.info("worker stopped")

    def _poll(self, round_due: bool) -> list[Message]:
        """What is fetched already; else wait for the first record only (a batch wait adds latency)."""
        batch = self.config.poll_batch
        msgs = self.consumer.consume(num_messages=batch, timeout=0)
        if msgs:
            return msgs
        if self._restoring or round_due:  # a restore slice or a round is waiting
            timeout = 0.0
        elif len(self.batcher):
            timeout = max(0.0, self.batcher.max_delay_s - self.batcher.oldest_wait(time.monotonic()))
        else:
            timeout = 0.2
        msgs = self.consumer.consume(num_messages=1, timeout=timeout)
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
        if self._restore_job is None:
            stable = self._stable_offsets if self._eos else None  # at least once, nothing is pending
            self._restore_job = Restore(self.store, self._restore_reader, sorted(self._restoring), self.metrics, stable)
        if not self._restore_job.step(_RESTORE_SLICE):
            return
        done = self._restore_job.partitions & self._assigned
        self._restore_job = None
        self._restoring -= done
        for p in done & self._seek_back.keys():  # records that slipped through the pause
            self.consumer.seek(TopicPartition(self.config.input_topic, p, self._seek_back.pop(p)))
        self.consumer.resume([TopicPartition(self.config.input_topic, p) for p in sorted(done)])

    def _stable_offsets(self, partitions: list[int], timeout_s: float) -> None:
        """The group's committed offsets of the partitions, asked until stable: a read_committed
        consumer's offset fetch waits while a transaction holding offsets for them is undecided."""
        with guard("consumer.committed", timeout_s + MARGIN_S):
            self.consumer.committed([TopicPartition(self.config.input_topic, p) for p in partitions], timeout_s)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what was processed, then forget the partitions' keys and pending events."""
        if not self._failed:
            self._commit_point(wait=True)
        self._forget({tp.partition for tp in partitions})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost (not revoked): another member may own them already, so write nothing."""
        log.warning("partitions lost=%s: dropping their unwritten state", sorted(tp.partition for tp in partitions))
        self._forget({tp.partition for tp in partitions})
        if self._eos:  # the open transaction holds outputs of the lost partitions: none may commit
            self._abort("partitions lost")

    def _drop(self, partitions: set[int]) -> None:
        """Forget the partitions' in-memory state and pending events."""
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
        for p in partitions:
            self._committed.pop(p, None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(str(p))
        self._assigned -= partitions
        self._restoring -= partitions
        self.metrics.assigned_partitions.set(len(self._assigned))
        log.info("revoked partitions=%s", sorted(partitions))

    # -- events ---------------------------------------------------------------------

    def _accept(self, msgs: list[Message]) -> None:
        """Decode a poll's records together, into columns; bad ones go to the dead-letter topic.

        Each field is read for the whole poll with one `map` (a loop over the messages reading
        them one by one cost ~1-2 us per event)."""
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
        self.batcher.add(events, time.monotonic())

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
        self.producer.produce(self.config.dlq_topic, msg.key(), msg.value(), p, headers)
        self.metrics.dead_letters.labels(reason).inc()
        self.metrics.events.labels("dead_letter").inc()
        log.info("dead letter reason=%s partition=%d offset=%d detail=%s", reason, p, offset, detail)

    # -- rounds ---------------------------------------------------------------------

    def _run_round(self) -> None:
        if self.store.cache.room() < self.batcher.max_keys:
            self._write_states()
            self.clock.lap("commit")
        self.rounds.run(self.batcher.take(), self.producer)

    # -- commit points --------------------------------------------------------------

    def _write_states(self) -> None:
        """Make room in the cache: every dirty state written and acknowledged, predictions first."""
        if self._eos:  # written states must be committed before they can be evicted and read back
            self._commit_transaction()
            return
        self.producer.flush()
        if self.store.write_dirty(self.producer, self.config.state_topic):
            self.producer.flush()

    def _commit_point(self, wait: bool = False) -> None:
        """Predictions, then states, then offsets; `wait` when the partitions are about to go."""
        started = time.perf_counter()
        if self._eos:
            self._commit_transaction()
        else:
            self._commit_offsets(wait)
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
            self.producer,
            self.config.state_topic,
            int(ttl_s * 1000),
            self.rounds.stream_time,
            self._committed,
            self.batcher.has,
        )
        if expired:
            log.info("expired idle keys=%d ttl_s=%s", expired, ttl_s)

    def _positions(self) -> dict[int, int]:
        """Per assigned partition with events consumed, the lowest event not processed yet."""
        pending = self.batcher.min_pending_offsets()
        return {p: pending.get(p, nxt) for p, nxt in self._next_offset.items() if p in self._assigned}

    def _offsets_to_commit(self) -> list[TopicPartition]:
        """Per partition, the lowest event not processed yet (where changed since the last commit)."""
        topic = self.config.input_topic
        return [TopicPartition(topic, p, off) for p, off in self._positions().items() if self._committed.get(p) != off]

    def _commit_offsets(self, wait: bool) -> None:
        """At least once, pipelined: flush (the predictions, and the states queued at the
        previous commit point), commit that point's offsets, then queue the dirty states: the
        loop produces them a slice per iteration, all within half the commit interval, and
        commits their offsets once they are all acknowledged (`_commit_acknowledged`), or the
        next commit point does. A state never gets ahead of its predictions, an offset never
        ahead of its states, and the loop waits only for what was produced since the last
        flush. `wait` (revoke, shutdown): all of it now, synchronously."""
        topic = self.config.state_topic
        self.store.write_queued(self.producer, topic)  # what is left of the previous point's states
        self.producer.flush()
        self._commit_pending(wait)
        self.store.queue_dirty(self.producer, topic)
        self._queued_at = time.monotonic()
        self._pending_offsets = self._offsets_to_commit()
        if wait:
            self.store.write_queued(self.producer, topic)
            self.producer.flush()
            self._commit_pending(wait)
        if self.store.write_tombstones(self.producer, self.config.state_topic, self._committed):
            self.producer.flush()

    def _commit_acknowledged(self) -> None:
        """Between commit points: commit the pending offsets as soon as their states are acknowledged."""
        if self._pending_offsets and not self.store.queued and not self.store.cache.writing:
            self._commit_pending(wait=False)

    def _commit_pending(self, wait: bool) -> None:
        """A periodic commit is asynchronous (a synchronous one stalls every partition for as
        long as a rebalance of the group lasts) and never piles up; a failed one is redone by the
        next commit point, which covers these offsets too."""
        if not self._pending_offsets or (self._commit_in_flight and not wait):
            return
        offsets, self._pending_offsets = self._pending_offsets, []
        try:
            if wait:
                with guard("consumer.commit (synchronous)", _SYNC_COMMIT_LIMIT_S):
                    done = self.consumer.commit(offsets=offsets, asynchronous=False)
                self._committed_offsets(None, done or [])
            else:
                self._commit_in_flight = True
                self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self._commit_in_flight = False
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed (redone at the next commit point): %s", exc.args[0])

    def _commit_transaction(self) -> None:
        """Exactly once: predictions, dead letters, states and input offsets in one transaction."""
        topic = self.config.state_topic
        self.store.write_dirty(self.producer, topic)
        sent = transaction_offsets(self._positions(), self._committed, self.producer.carries_records)
        changed = [TopicPartition(self.config.input_topic, p, offset) for p, offset in sent.items()]
        try:
            self.producer.commit(changed, self.consumer.consumer_group_metadata())
        except StuckClientError as exc:  # the transaction's outcome is whatever fencing the producer decides
            self.metrics.commit_failures.inc()
            self._abort(str(exc), replace=True)
            return
        except (KafkaException, KafkaDeliveryError) as exc:
            self.metrics.commit_failures.inc()
            self._abort(str(exc))
            if isinstance(exc, KafkaDeliveryError) and exc.permanent:
                raise  # replaying would fail the same way: stop, nothing of it committed
            return
        self._committed.update({tp.partition: tp.offset for tp in changed})
        self.producer.begin()
        self.store.write_tombstones(self.producer, topic, self._committed)  # in the next transaction

    def _abort(self, reason: str, replace: bool = False) -> None:
        """Drop the transaction and every assigned partition's in-memory state; restore them
        from what was committed: state of an aborted transaction is never reused. `replace`:
        the producer is stuck in a call; a new one with its transactional.id fences it, which
        completes or aborts its transaction, and the restore waits for that outcome."""
        log.error(
            "transaction aborted (%s): restoring partitions=%s from committed state", reason, sorted(self._assigned)
        )
        self.metrics.transaction_aborts.inc()
        if not replace:
            try:
                self.producer.abort()
                self.producer.begin()
            except KafkaException as exc:  # fenced or otherwise unusable
                reason, replace = exc.args[0], True
        if replace:
            log.error("transactional producer replaced: %s", reason)
            self.producer = self._new_producer()
        self._rewind(self._assigned)

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

    def _committed_offsets(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Commit results (callback of asynchronous commits): only confirmed offsets count."""
        self._commit_in_flight = False
        if error is not None:
            self.metrics.commit_failures.inc()
            log.warning("offset commit failed (redone at the next commit point): %s", error)
            return
        for tp in partitions:
            if tp.error is None and tp.topic == self.config.input_topic and tp.partition in self._assigned:
                self._committed[tp.partition] = tp.offset

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
