"""exactly_once_v2's abort path, driven by a real fault: the broker aborts the worker's open
transaction, and the worker's next commit fails, aborts and restores its partitions from what
was committed; predictions stay exact, none doubled for a read_committed reader.

The fault: the worker process is frozen (SIGSTOP, as a long GC pause, a VM or container freeze
or CPU starvation would) with a transaction open, for longer than its transaction.timeout.ms
(5 s here) but shorter than its session timeout (45 s here, so the group keeps the member and
the abort comes from the transaction path alone, not from lost partitions). The transaction
coordinator aborts the timed-out transaction on its own and bumps the producer's epoch (its
log says so: the test resumes the worker, SIGCONT, only once it did).

SIGKILL of the transaction coordinator's broker instead (the first idea) does not make a
transaction fail: librdkafka finds the coordinator's successor once the partition of
__transaction_state moves (every internal topic has three replicas) and the transaction goes
on; the worker only stalls for those seconds (tried: a ~14 s stall, no abort).

And the other end of a transaction a fault interrupts: one that is not aborted but commits late,
after the group gave its partitions to another member (test_a_late_commit_...): the new owner
must build on what it committed.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from confluent_kafka import Consumer, IsolationLevel, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from tests.cluster.checks import Recovery, check_outcome, committed_offsets, record_row
from tests.cluster.cluster import LocalCluster, kafka_partition_for
from tests.cluster.netfault import Toxiproxy
from tests.cluster.workers import (  # noqa: F401 (fixtures used here, by name)
    Stream,
    Timed,
    assignment,
    gauge,
    logs,
    netfault_cleaned_up,
    proxy_latency,
    start_ns_worker,
    wait_for,
    warm_group_coordinator,
)
from tests.integration.conftest import WorkerProcess
from tests.integration.kafka_io import metric
from tests.integration.test_transactions import offset_commit_key
from worker.config import KafkaConfig
from worker.kafka.topics import create_topic

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

KEYS, EVENTS, PARTITIONS, RATE = 120, 40, 6, 200  # 4,800 events over 24 s
TRANSACTION_TIMEOUT_MS = 5000
SESSION_TIMEOUT_MS = 45000
# the coordinator looks for timed-out transactions every 10 s
# (transaction.abort.timed.out.transaction.cleanup.interval.ms): the abort comes 5-15 s in
ABORTED_WITHIN_S = 30.0
INSTANCE = "w1"


_ADMINS: dict[str, AdminClient] = {}


def open_transactions(kafka: KafkaConfig, topics: list[str]) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (last stable offset, high watermark) where an open transaction holds
    the last stable offset back. One admin client for the test: a new one per look costs a
    bootstrap, and the looks happen while the worker is frozen."""
    admin = _ADMINS.setdefault(kafka.bootstrap_servers, AdminClient(kafka.admin()))
    parts = [(t, p) for t in topics for p in admin.list_topics(t, timeout=10).topics[t].partitions]
    ends = {}
    for isolation in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
        specs = {TopicPartition(t, p): OffsetSpec.latest() for t, p in parts}
        futures = admin.list_offsets(specs, isolation_level=isolation, request_timeout=10)
        ends[isolation] = {(tp.topic, tp.partition): f.result(timeout=15).offset for tp, f in futures.items()}
    stable, high = ends[IsolationLevel.READ_COMMITTED], ends[IsolationLevel.READ_UNCOMMITTED]
    return {tp: (stable[tp], high[tp]) for tp in parts if stable[tp] < high[tp]}


def timeout_rollbacks(cluster: LocalCluster, transactional_id: str) -> int:
    """How many times a transaction coordinator logged aborting the id's transaction for its timeout."""
    line = f"Completed rollback of ongoing transaction for transactionalId {transactional_id} due to timeout"
    count = 0
    for node in cluster.node_ids:
        try:
            count += (cluster.node_dir(node) / "server.log").read_text(errors="replace").count(line)
        except OSError:
            continue
    return count


def freeze_with_open_transaction(worker: WorkerProcess, kafka: KafkaConfig, topics: list[str]) -> dict:
    """SIGSTOP the worker at a moment its open transaction holds records, and not one it was
    committing (its markers would land within the second): else thaw and try again. The
    partitions the transaction holds."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        os.kill(worker.proc.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        time.sleep(0.5)  # what the producer had sent lands on the brokers
        held = open_transactions(kafka, topics)
        time.sleep(0.5)
        if held and open_transactions(kafka, topics) == held:
            return held
        os.kill(worker.proc.pid, signal.SIGCONT)
        # a miss must not be a fault of its own: frozen past the transaction's timeout (the
        # looks slow on a loaded machine), its records would time out in the producer at the thaw
        assert time.monotonic() - frozen < TRANSACTION_TIMEOUT_MS / 1000, "a missed freeze outlasted the timeout"
        time.sleep(0.3)
    pytest.fail(f"never caught the worker with an open transaction in 30 s:{logs([worker])}")


def test_a_transaction_the_coordinator_aborted_is_aborted_and_its_partitions_restored(
    healthy_cluster: LocalCluster, kafka, topics, model_file, start_worker
) -> None:
    cluster = healthy_cluster
    model = model_file("lstm", (32, 16))
    group = f"group-{topics.input}"
    transactional_id = f"{group}.{INSTANCE}"  # Worker.__init__
    create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS, replication_factor=3)
    warm_group_coordinator(kafka, group, topics.input)  # a new cluster's first group: see there
    worker = start_worker(
        model,
        topics,
        "--processing-guarantee",
        "exactly_once_v2",
        "--group-instance-id",
        INSTANCE,
        "-X",
        f"transaction.timeout.ms={TRANSACTION_TIMEOUT_MS}",
        "-X",
        f"session.timeout.ms={SESSION_TIMEOUT_MS}",
    )
    worker.wait_ready(timeout=120)
    coordinator = cluster.transaction_coordinator(transactional_id)

    def scrape(name: str) -> float:
        value = gauge(worker, name)
        assert value is not None, f"no /metrics from the worker:{logs([worker])}"
        return value

    def committed() -> dict[int, int]:
        return committed_offsets(kafka, topics.input, group, list(range(PARTITIONS)))

    stream = Stream(kafka, topics.input, KEYS, EVENTS, RATE, PARTITIONS)
    stream.start()
    # transactions commit steadily (states and offsets of every partition) before the fault:
    # there is committed state to restore, and the first transactions of a new cluster, which
    # may take seconds, are not the one frozen
    wait_for(lambda: min(committed().values()) > 0, 60, "offsets committed on every partition", [worker])
    first = sum(committed().values())
    wait_for(lambda: sum(committed().values()) > first, 30, "a later transaction committed", [worker])
    aborts_before = scrape("lstm_worker_transaction_aborts_total")
    restored_before = scrape("lstm_worker_restore_records_total")
    rollbacks_before = timeout_rollbacks(cluster, transactional_id)

    outputs = [topics.output, topics.state]
    held = freeze_with_open_transaction(worker, kafka, outputs)
    frozen_at = time.monotonic()
    try:
        wait_for(
            lambda: timeout_rollbacks(cluster, transactional_id) > rollbacks_before,
            ABORTED_WITHIN_S,
            f"the coordinator (broker {coordinator}) to roll back the frozen worker's transaction (holding {held})",
        )
        assert not open_transactions(kafka, outputs), "rolled back, yet the last stable offsets are held"
    finally:
        frozen_s = time.monotonic() - frozen_at
        os.kill(worker.proc.pid, signal.SIGCONT)
    recovery = Recovery(kafka, topics.input, group)  # the input's ends at the thaw
    since_thaw = Timed(lambda: recovery.wait_recovered(timeout=120))

    wait_for(
        lambda: scrape("lstm_worker_transaction_aborts_total") > aborts_before,
        60,
        "the worker to abort its transaction",
        [worker],
    )
    wait_for(
        lambda: scrape("lstm_worker_restore_records_total") > restored_before,
        60,
        "the worker to restore its partitions from the state topic",
        [worker],
    )
    produced = stream.finish(timeout=120)
    assert produced.records == KEYS * EVENTS
    recovered_s = since_thaw.value(timeout=130)
    Recovery(kafka, topics.input, group).wait_recovered(timeout=120)  # every event committed

    text = worker.get("/metrics")[1]
    aborts = metric(text, "lstm_worker_transaction_aborts_total") - aborts_before
    restored = metric(text, "lstm_worker_restore_records_total") - restored_before
    log = worker.log_path.read_text()
    aborted = re.findall(r"transaction aborted \((.*)\): restoring partitions=(\[[0-9, ]*\])", log)
    # the transaction path's abort, with the partitions still assigned (not one of partitions
    # lost to the group, which restores none)
    assert any(reason != "partitions lost" and parts == str(list(range(PARTITIONS))) for reason, parts in aborted), (
        f"no abort of the transaction path restoring every partition: {aborted}{logs([worker])}"
    )
    assert "partitions lost" not in log, f"the group lost the member: not the transaction path alone{logs([worker])}"
    # an abort is never tried on a transaction that is not open (one that committed, say)
    assert "Operation not valid in state Ready" not in log, f"an abort outside a transaction{logs([worker])}"

    outcome = check_outcome(kafka, topics, model, "exactly_once_v2", group, timeout_s=60)
    print(
        f"\nfroze {frozen_s:.1f} s with a transaction open on {len(held)} partitions (coordinator: broker "
        f"{coordinator}); aborts {aborts:.0f}, state records restored after them {restored:.0f}; aborted: {aborted}; "
        f"recovered {recovered_s:.1f} s after the thaw; {outcome}"
    )
    record_row("transaction aborted: coordinator timed it out (worker frozen)", "exactly_once_v2", outcome, recovered_s)
    try:
        outcome.assert_exact("exactly_once_v2")
    except AssertionError as exc:
        raise AssertionError(f"{exc}{logs([worker])}") from None
    assert worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}:{logs([worker])}"
    assert worker.stop() == 0, f"the worker did not stop cleanly:{logs([worker])}"


DELAY_MS = 1000


def pending_offsets_of(
    kafka: KafkaConfig, group: str, topic: str, partitions: set[int]
) -> tuple[int, list[tuple[str, str, int]]] | None:
    """Where the group's offset commits live (its __consumer_offsets partition): the last stable
    offset and what the record there commits, when the open transaction holding it back starts
    with offset commits of `partitions` of `topic` (None otherwise)."""
    admin = AdminClient(kafka.admin())
    internal = "__consumer_offsets"
    count = len(admin.list_topics(internal, timeout=10).topics[internal].partitions)
    tp = TopicPartition(internal, kafka_partition_for(group, count))
    ends = {}
    for isolation in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
        ends[isolation] = (
            admin.list_offsets({tp: OffsetSpec.latest()}, isolation_level=isolation, request_timeout=10)[tp]
            .result(timeout=15)
            .offset
        )
    stable, high = ends[IsolationLevel.READ_COMMITTED], ends[IsolationLevel.READ_UNCOMMITTED]
    if stable >= high:
        return None
    consumer = Consumer(kafka.consumer("tests-pending-offsets", **{"isolation.level": "read_uncommitted"}))
    try:
        consumer.assign([TopicPartition(internal, tp.partition, stable)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            commits = offset_commit_key(msg.key()) if msg.key() else None
            if commits is None or msg.offset() != stable:
                return None
            group_, topic_, partition = commits
            return (stable, [commits]) if (group_, topic_) == (group, topic) and partition in partitions else None
        return None
    finally:
        consumer.close()


def test_a_late_commit_of_the_previous_owner_is_seen_by_the_new_owners_restore(
    healthy_cluster: LocalCluster,
    kafka,
    topics,
    model_file,
    start_worker,
    start_ns_worker,  # noqa: F811 (the fixture imported above)
    toxiproxy: Toxiproxy,
) -> None:
    """Worker A is frozen (SIGSTOP) right after its transaction's offsets reached the group
    coordinator (TxnOffsetCommit done, EndTxn not sent), for longer than the session timeout:
    B is given A's partitions. B's consumer cannot start them before A's transaction is over
    (KIP-447: the offset fetch answers UNSTABLE_OFFSET_COMMIT while those offsets are pending),
    and its restore must wait for it too: the state it restores must be the state those offsets
    go with. A is then thawed well
    within its transaction's timeout and its commit completes (Kafka allows it: the generation
    was checked when the offsets were sent): B must continue from A's offsets with A's states,
    nothing predicted twice or from an older state.

    The moment is made wide enough to catch: A runs in the namespace, and the proxy of its
    transaction coordinator's broker (not the group coordinator's) delays each way by 1 s, so
    that its EndTxn comes seconds after its offsets."""
    cluster = healthy_cluster
    model = model_file("lstm", (32, 16))
    group = f"group-{topics.input}"
    create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS, replication_factor=3)
    warm_group_coordinator(kafka, group, topics.input)
    init = Producer({"bootstrap.servers": cluster.bootstrap, "transactional.id": f"init-{topics.input}"})
    init.init_transactions(60)  # __transaction_state exists: its leaders say where coordinators are
    del init  # not left reconnecting once the cluster stops
    cluster.wait_healthy(timeout=60)
    group_coordinator = cluster.leader("__consumer_offsets", kafka_partition_for(group, 4))
    instance = next(
        f"a{i}" for i in range(1, 200) if cluster.transaction_coordinator(f"{group}.a{i}") != group_coordinator
    )
    txn_coordinator = cluster.transaction_coordinator(f"{group}.{instance}")
    args = ("--processing-guarantee", "exactly_once_v2")
    a = start_ns_worker(model, topics, *args, "--group-instance-id", instance)
    b = start_worker(model, topics, *args)
    both = [a, b]
    for w in both:
        w.wait_ready(timeout=120)

    def assigned(w: WorkerProcess) -> float | None:
        return gauge(w, "lstm_worker_assigned_partitions")

    wait_for(lambda: assigned(a) == assigned(b) == PARTITIONS / 2, 60, "the partitions split 3/3", both)
    a_parts = assignment(a)
    assert len(a_parts) == PARTITIONS / 2, a_parts

    def committed() -> dict[int, int]:
        return committed_offsets(kafka, topics.input, group, list(range(PARTITIONS)))

    stream = Stream(kafka, topics.input, KEYS, EVENTS * 2, RATE, PARTITIONS)
    stream.start()
    wait_for(lambda: min(committed().values()) > 0, 60, "offsets committed on every partition", both)

    proxy_latency(toxiproxy, txn_coordinator, DELAY_MS)
    # freeze A between its transaction's offsets and its commit (thaw and try again otherwise):
    # still pending once what A had sent is through the delay and B's transactions (every 0.5 s)
    # are out of the way
    deadline, pending = time.monotonic() + 90, None
    while time.monotonic() < deadline:
        os.kill(a.proc.pid, signal.SIGSTOP)
        time.sleep(2 * DELAY_MS / 1000 + 0.5)
        pending = pending_offsets_of(kafka, group, topics.input, a_parts)
        if pending:
            break
        os.kill(a.proc.pid, signal.SIGCONT)
        time.sleep(0.3 + 0.7 * (time.monotonic() % 1))  # another moment of A's commit cycle
    assert pending, f"never caught A between its offsets and its commit in 60 s:{logs(both)}"
    frozen_at = time.monotonic()
    try:
        wait_for(lambda: assigned(b) == PARTITIONS, 30, "B to be given A's partitions", [b])
        time.sleep(3.0)
        # the states that go with A's offsets are not decided yet: B's restore waits for them
        assert b.get("/readyz")[0] != 200, f"B restored A's partitions while A's offsets were pending:{logs(both)}"
    finally:
        frozen_s = time.monotonic() - frozen_at
        os.kill(a.proc.pid, signal.SIGCONT)
    time.sleep(2 * DELAY_MS / 1000 + 1)  # A's EndTxn through the delay
    toxiproxy.clear()
    produced = stream.finish(timeout=180)
    assert produced.records == KEYS * EVENTS * 2
    Recovery(kafka, topics.input, group).wait_recovered(timeout=120)
    outcome = check_outcome(kafka, topics, model, "exactly_once_v2", group, timeout_s=60)
    print(
        f"\nA ({sorted(a_parts)}; transaction coordinator {txn_coordinator}, the group's {group_coordinator}) "
        f"frozen {frozen_s:.1f} s with its offsets pending at {pending}; {outcome}"
    )
    record_row("zombie transaction commits after the rebalance", "exactly_once_v2", outcome, None)
    try:
        outcome.assert_exact("exactly_once_v2")
    except AssertionError as exc:
        raise AssertionError(f"{exc}{logs(both)}") from None
    for w in both:
        assert w.proc.poll() is None, f"{w.log_path.name} exited with {w.proc.returncode}:{logs(both)}"
        assert w.stop() == 0, f"{w.log_path.name} did not stop cleanly:{logs(both)}"
