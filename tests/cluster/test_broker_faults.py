"""Broker faults under a steady stream, against a group of real worker processes: workers that
start together on a fresh input topic, the SIGKILL of the broker that leads the input and state
partitions and coordinates the group, and a rolling restart of the three. Each run must lose no
event, predict none wrong, leave every key's latest state at the offset of its last event and,
exactly once, double nothing; no worker may exit. Each adds a row to the session's fault table.

The stream runs in a thread at a steady rate, so that the fault lands while events keep coming:
the producer's queue holds what a leaderless partition cannot take, so the rate of the stream
does not depend on the fault.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from tests.cluster.checks import check_outcome, forget_admins, record_row
from tests.cluster.cluster import REPO, ClusterError, LocalCluster, kafka_partition_for
from tests.integration.conftest import Topics
from tests.integration.kafka_io import metric
from worker.config import KafkaConfig
from worker.kafka.topics import create_topic
from worker.synthetic import produce_synthetic

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

PARTITIONS = 6
FEATURES = 4
SIGKILL_DOWN_S = 15.0  # how long the killed broker stays down
KEYS = 120  # per guarantee's stream in the broker faults


def new_topics() -> Topics:
    run = uuid.uuid4().hex[:10]
    return Topics(f"events-{run}", f"predictions-{run}")


def worker_args(guarantee: str, *extra: str) -> tuple[str, ...]:
    """Exactly once: a killed member's (or broker's) open transaction holds read_committed
    readers back until it times out: 10 s rather than the default minute."""
    args = ("--processing-guarantee", guarantee)
    if guarantee == "exactly_once_v2":
        args += ("-X", "transaction.timeout.ms=10000")
    return (*args, *extra)


def logs(workers: Sequence[Any], tail: int = 6000) -> str:
    """The tail of every worker's log, for an assertion message (read from the file: the
    process writes it directly, and a stopped worker's log object is closed)."""
    return "".join(
        f"\n----- worker {i} (pid {w.proc.pid}, exit {w.proc.poll()}, {w.log_path}) -----\n"
        f"{w.log_path.read_text(errors='replace')[-tail:]}"
        for i, w in enumerate(workers)
    )


def assert_alive(workers: Sequence[Any], when: str) -> None:
    dead = [i for i, w in enumerate(workers) if w.proc.poll() is not None]
    assert not dead, f"worker(s) {dead} exited {when}:" + logs(workers)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, workers: Sequence[Any]) -> float:
    """Until `condition` (seconds waited), every worker alive meanwhile; fails loudly with the logs."""
    started = time.monotonic()
    while True:
        assert_alive(workers, f"while waiting for {what}")
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}" + logs(workers))
        time.sleep(0.25)


def predictions(workers: Sequence[Any]) -> float:
    total = 0.0
    for w in workers:
        with contextlib.suppress(OSError):  # a worker that answers late is counted at the next look
            total += metric(w.get("/metrics")[1], "lstm_worker_predictions_total")
    return total


class Stream:
    """produce_synthetic in a thread at `rate` events/s over the input's partitions."""

    def __init__(self, kafka: KafkaConfig, topic: str, keys: int, events_per_key: int, rate: float, seed: int) -> None:
        self.events = keys * events_per_key
        self.error: BaseException | None = None
        self.result: Any = None
        kwargs = dict(
            topic=topic,
            keys=keys,
            events_per_key=events_per_key,
            features=FEATURES,
            rate=rate,
            seed=seed,
            partitions=PARTITIONS,
        )
        self._thread = threading.Thread(target=self._run, args=(kafka, kwargs), name="stream", daemon=True)
        self.started = time.monotonic()
        self._thread.start()

    def _run(self, kafka: KafkaConfig, kwargs: dict[str, Any]) -> None:
        try:
            self.result = produce_synthetic(kafka, **kwargs)
        except BaseException as exc:  # reported by finish
            self.error = exc

    def done(self) -> bool:
        return not self._thread.is_alive()

    def finish(self, timeout: float, workers: Sequence[Any]) -> None:
        wait_for(lambda: not self._thread.is_alive(), timeout, "the stream to be produced", workers)
        assert self.error is None, f"the stream failed: {self.error!r}"


# checks.Recovery and LocalCluster.group_coordinator run in a child process of their own
# (CHILD), for two faults of librdkafka 2.16's admin client seen here whenever the group's
# coordinator died or moved under its group calls (ListConsumerGroupOffsets, DescribeConsumerGroups):
# - it kills the process that makes them, which in the test process ended the session and left
#   the cluster and the workers running: SIGABRT, "rd_kafka_enq_once_del_source_return: Assertion
#   `eonce->refcnt > 0' failed" (confluentinc/librdkafka#4605; a loop of
#   list_consumer_group_offsets across the SIGKILL of the coordinator reproduces it at once), and
#   SIGSEGV: an OffsetFetch answered NOT_COORDINATOR makes rd_kafka_handle_OffsetFetch ask the
#   client's consumer group, which an admin client has not, for a new coordinator (rd_kafka_cgrp_op
#   on a NULL rk_cgrp, confluentinc/librdkafka#5040);
# - a call does not return for a minute and more, its request_timeout=10 notwithstanding, while
#   the coordinator it looked up is down (a fresh client's first call during the rolling
#   restart: 60 and 92 s), so that the recovery time measured was the call's, not the group's.
# In the child, Recovery reads the group's committed offsets with a consumer's committed()
# instead (an OffsetFetch of the consumer's own group machinery, the one the workers use, which
# follows the coordinator; it joins no group), bounded by its timeout; a child killed by a signal
# all the same is started again and resumes the same wait (or question). Each look that differs
# from the one before goes to the child's stderr file (in the test's tmp_path).
CHILD = r"""
import json, sys, time, types
verify = types.ModuleType("worker.verify")  # checks imports verify (TensorFlow, seconds): not used here
verify.verify = None
sys.modules["worker.verify"] = verify
from confluent_kafka import Consumer, TopicPartition
import tests.cluster.checks as checks
from tests.cluster.checks import Recovery
from tests.cluster.cluster import LocalCluster
from worker.config import KafkaConfig
what, args = sys.argv[1], sys.argv[2:]
_behind, _last, _consumers = Recovery.behind, [None], {}


def committed_offsets(kafka, topic, group_id, partitions):
    if group_id not in _consumers:
        _consumers[group_id] = Consumer(kafka.consumer(group_id))
    done = _consumers[group_id].committed([TopicPartition(topic, p) for p in partitions], timeout=5)
    return {tp.partition: tp.offset for tp in done}


def behind(self):
    try:
        seen = _behind(self)
    except Exception as exc:
        seen = exc
    if repr(seen) != _last[0]:
        _last[0] = repr(seen)
        print(f"{time.monotonic() - self.started:.2f} s: {seen!r}", file=sys.stderr, flush=True)
    if isinstance(seen, Exception):
        raise seen
    return seen


checks.committed_offsets, Recovery.behind = committed_offsets, behind
if what == "recovery":
    bootstrap, topic, group_id, timeout, resume = args
    if resume == "-":
        recovery = Recovery(KafkaConfig(bootstrap), topic, group_id)
    else:  # the same wait again (time.monotonic is the system's CLOCK_MONOTONIC: the same clock)
        state = json.loads(resume)
        recovery = Recovery.__new__(Recovery)
        recovery.kafka, recovery.topic, recovery.group_id = KafkaConfig(bootstrap), topic, group_id
        recovery.started, recovery.targets = state["started"], {int(p): t for p, t in state["targets"].items()}
    print(json.dumps({"started": recovery.started, "targets": recovery.targets}), flush=True)
    left = recovery.started + float(timeout) - time.monotonic()
    print(json.dumps({"seconds": recovery.wait_recovered(timeout=max(left, 1.0))}), flush=True)
elif what == "coordinator":
    data_dir, port, controller_port, group_id = args
    cluster = LocalCluster(data_dir, port=int(port), controller_port=int(controller_port))
    print(json.dumps({"coordinator": cluster.group_coordinator(group_id)}), flush=True)
"""
CRASHES_ALLOWED = 10  # children started again after librdkafka killed them, per wait


class Child:
    """One run of CHILD: its stdout lines as JSON, its stderr (librdkafka's log lines) to a file."""

    def __init__(self, log_dir: Path, name: str, *args: str) -> None:
        self.lines: list[dict[str, Any]] = []
        self._killed = False
        self.stderr_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.stderr"
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def value(self, key: str) -> Any:
        return next((line[key] for line in self.lines if key in line), None)

    def done(self) -> bool:
        return self.proc.poll() is not None and not self._reader.is_alive()

    def crashed(self) -> bool:
        """Killed by a signal (SIGABRT, SIGSEGV) and not by us."""
        return self.proc.returncode is not None and self.proc.returncode < 0 and not self._killed

    def stderr(self, tail: int = 3000) -> str:
        return self.stderr_path.read_text(errors="replace")[-tail:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self._killed = True
            self.proc.kill()
            self.proc.wait()


CRASHES: list[str] = []  # the children librdkafka killed this session (printed by the tests)


def _note_crash(child: Child, what: str) -> None:
    assertion = [line for line in child.stderr().splitlines() if "ssert" in line]
    why = assertion[-1] if assertion else "no message"
    CRASHES.append(f"{what}: {signal.Signals(-child.proc.returncode).name} ({why})")
    print(f"child crashed, started again: {CRASHES[-1]}")


def group_coordinator(cluster: LocalCluster, group_id: str, log_dir: Path) -> int:
    """cluster.group_coordinator(group_id), in a child process."""
    args = (str(cluster.data_dir), str(cluster.port), cluster.env["KAFKA_CONTROLLER_PORT"], group_id)
    for _ in range(CRASHES_ALLOWED + 1):
        child = Child(log_dir, "coordinator", "coordinator", *args)
        try:
            child.proc.wait(60)
        finally:
            child.kill()
        child._reader.join(5)
        if child.value("coordinator") is not None:
            return int(child.value("coordinator"))
        if not child.crashed():
            raise AssertionError(f"group_coordinator({group_id!r}) failed ({child.proc.returncode}):\n{child.stderr()}")
        _note_crash(child, f"group_coordinator({group_id!r})")
    raise AssertionError(f"group_coordinator({group_id!r}): the child crashed {CRASHES_ALLOWED + 1} times")


class RecoveryWatch:
    """checks.Recovery made now (right before a fault), its wait_recovered running (in a child
    process) while the test goes on with the fault: the recovery time is not bounded below by
    the fault's steps (a broker down for 15 s, a rolling restart), which the group may well get
    past sooner. Made once the stream is finished, `result` waits for the group to commit past
    every event."""

    def __init__(self, kafka: KafkaConfig, topic: str, group_id: str, timeout: float, log_dir: Path) -> None:
        self._args = (kafka.bootstrap_servers, topic, group_id, str(timeout))
        self._log_dir = log_dir
        self.timeout = timeout
        self.child = Child(log_dir, "recovery", "recovery", *self._args, "-")
        deadline = time.monotonic() + 90
        while self.child.value("started") is None:  # the snapshot is taken: the fault may begin
            if self.child.done():
                raise AssertionError(f"Recovery() failed ({self.child.proc.returncode}):\n{self.child.stderr()}")
            assert time.monotonic() < deadline, "Recovery() took over 90 s:\n" + self.child.stderr()
            time.sleep(0.05)
        self.state = {"started": self.child.value("started"), "targets": self.child.value("targets")}
        self.crashes = 0

    def result(self, workers: Sequence[Any]) -> float:
        """Seconds from the snapshot until the group committed past it; fails with the logs."""
        try:
            while True:
                remaining = self.state["started"] + self.timeout - time.monotonic()
                wait_for(self.child.done, max(remaining, 0) + 15, "the recovery watch", workers)
                seconds = self.child.value("seconds")
                if seconds is not None:
                    return float(seconds)
                if not self.child.crashed() or self.crashes >= CRASHES_ALLOWED:
                    pytest.fail(
                        f"the group did not commit past {self.state['targets']} within {self.timeout} s "
                        f"(watch exited {self.child.proc.returncode}):\n{self.child.stderr()}" + logs(workers)
                    )
                self.crashes += 1
                _note_crash(self.child, "Recovery.wait_recovered")
                self.child = Child(self._log_dir, "recovery", "recovery", *self._args, json.dumps(self.state))
        finally:
            self.child.kill()


def drain(kafka: KafkaConfig, topic: str, group_id: str, workers: Sequence[Any], log_dir: Path) -> None:
    """Until the group has committed past every event of the input (the stream finished)."""
    RecoveryWatch(kafka, topic, group_id, 90, log_dir).result(workers)


def check_and_record(
    kafka: KafkaConfig, topics: Any, model: Path, guarantee: str, group_id: str, fault: str, recovery_s: float | None
) -> Any:
    forget_admins()  # a client of its own, not one that lived through the fault (a cached coordinator gone)
    outcome = check_outcome(kafka, topics, model, guarantee, group_id)
    record_row(fault, guarantee, outcome, recovery_s)  # before the assertion: a failure is in the table too
    return outcome


def stop_all(workers: Sequence[Any]) -> None:
    """Every worker still alive, then each stops with 0 on SIGTERM."""
    assert_alive(workers, "before the end of the test")
    codes = [w.stop() for w in workers]
    assert codes == [0] * len(workers), f"exit codes on SIGTERM {codes}:" + logs(workers)


def replication_factors(cluster: LocalCluster, topic: str) -> set[int]:
    info = cluster.admin().list_topics(topic, timeout=10).topics[topic]
    assert info.error is None, f"{topic}: {info.error}"
    return {len(p.replicas) for p in info.partitions.values()}


def leaders(cluster: LocalCluster, topic: str) -> dict[int, int]:
    info = cluster.admin().list_topics(topic, timeout=10).topics.get(topic)
    if info is None or info.error is not None:
        return {}
    return {p: int(part.leader) for p, part in info.partitions.items()}


def start_node(cluster: LocalCluster, node: int) -> None:
    """cluster.start_nodes(node), once more if cluster.sh took the node for exited while it runs:
    kafka_started (deploy/kafka/node.sh) checks the pid's /proc cmdline for server.properties, and
    right after `nohup ... &` the pid may still be the script's forked subshell, not yet the JVM
    it execs (seen on this loaded machine: "the broker in .../node-1 exited" while it came up).
    cluster.sh leaves a running node alone; the caller waits for it to be healthy."""
    try:
        cluster.start_nodes(node)
    except ClusterError as exc:
        time.sleep(1)
        if "exited" not in str(exc) or not cluster.running(node):
            raise
        print(f"cluster.sh took node {node} for exited while it runs: {str(exc).splitlines()[0]}")
        cluster.start_nodes(node)


# -- 1. workers started at once on a fresh input topic ------------------------------------


def test_workers_started_at_once_all_join(healthy_cluster, kafka, topics, model_file, start_worker, tmp_path) -> None:
    """Three workers at the same moment, none of their topics there but the input: each
    creates or waits for the others' output, state and dead-letter topics, all three join and
    become ready, none exits. recovery s: from the start until all three are ready."""
    cluster, guarantee = healthy_cluster, "exactly_once_v2"
    model = model_file("lstm", (32, 16))
    create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS, replication_factor=3)
    group_id = f"group-{topics.input}"

    started = time.monotonic()
    workers = [start_worker(model, topics, *worker_args(guarantee)) for _ in range(3)]
    for w in workers:
        w.wait_ready(timeout=120)
    ready_s = time.monotonic() - started
    time.sleep(2)  # an exit just after ready (the exit 2 came at the start) would show now
    assert_alive(workers, "after all became ready")
    for topic in (topics.output, topics.state, topics.dlq):
        assert replication_factors(cluster, topic) == {3}, f"{topic} not replicated three times" + logs(workers)

    stream = Stream(kafka, topics.input, keys=60, events_per_key=20, rate=400, seed=41)
    stream.finish(60, workers)
    drain(kafka, topics.input, group_id, workers, tmp_path)
    outcome = check_and_record(kafka, topics, model, guarantee, group_id, "3 workers started at once", ready_s)
    assert_alive(workers, "after the stream")
    outcome.assert_exact(guarantee)
    stop_all(workers)


# -- 2. SIGKILL of the broker that leads everything the group uses --------------------------


def _group_coordinated_by(cluster: LocalCluster, node: int, prefix: str) -> str:
    """A group id whose __consumer_offsets partition `node` leads."""
    count = len(cluster.admin().list_topics("__consumer_offsets", timeout=10).topics["__consumer_offsets"].partitions)
    led = {p for p, leader in leaders(cluster, "__consumer_offsets").items() if leader == node}
    assert led, f"node {node} leads no partition of __consumer_offsets"
    for i in range(10_000):
        group_id = f"{prefix}-{i}"
        if kafka_partition_for(group_id, count) in led:
            return group_id
    raise AssertionError(f"no group id coordinated by node {node}")


def _topics_led_by(cluster: LocalCluster, node: int, topics: Any) -> None:
    """The input and the state topic, every partition's first (preferred, initial) replica `node`."""
    others = [i for i in cluster.node_ids if i != node]
    assignment = [[node, *(others if p % 2 == 0 else others[::-1])] for p in range(PARTITIONS)]
    admin = cluster.admin()
    new = [
        NewTopic(topics.input, num_partitions=PARTITIONS, replica_assignment=assignment),
        NewTopic(
            topics.state, num_partitions=PARTITIONS, replica_assignment=assignment, config={"cleanup.policy": "compact"}
        ),
    ]
    for future in admin.create_topics(new).values():
        future.result(timeout=30)
    deadline = time.monotonic() + 30
    for topic in (topics.input, topics.state):
        while leaders(cluster, topic) != dict.fromkeys(range(PARTITIONS), node):
            assert time.monotonic() < deadline, f"{topic} not all led by node {node}: {leaders(cluster, topic)}"
            time.sleep(0.2)


GUARANTEES = ("at_least_once", "exactly_once_v2")


@dataclass
class GroupRun:
    """One guarantee's share of a fault: its topics, its group, its workers and its stream (both
    guarantees go through the same fault at once, each on its own)."""

    guarantee: str
    topics: Topics
    group_id: str
    workers: list[Any]
    stream: Stream | None = None
    watch: RecoveryWatch | None = None

    def start_stream(self, kafka: KafkaConfig, events_per_key: int, rate: float, seed: int) -> None:
        self.stream = Stream(kafka, self.topics.input, keys=KEYS, events_per_key=events_per_key, rate=rate, seed=seed)

    def quarter_predicted(self) -> bool:
        assert self.stream is not None
        return predictions(self.workers) >= self.stream.events / 4

    def watch_recovery(self, kafka: KafkaConfig, tmp_path: Path) -> None:
        log_dir = tmp_path / self.guarantee
        log_dir.mkdir(exist_ok=True)
        self.watch = RecoveryWatch(kafka, self.topics.input, self.group_id, 150, log_dir)

    def finish(self, kafka: KafkaConfig, model: Path, fault: str, tmp_path: Path) -> Any:
        """The stream finished and drained; every prediction checked (the row recorded)."""
        assert self.stream is not None and self.watch is not None
        self.stream.finish(60, self.workers)
        recovery_s = self.watch.result(self.workers)
        drain(kafka, self.topics.input, self.group_id, self.workers, tmp_path / self.guarantee)
        return check_and_record(kafka, self.topics, model, self.guarantee, self.group_id, fault, recovery_s)


def assert_exact(runs: Sequence[GroupRun], outcomes: Sequence[Any], when: str) -> None:
    everyone = [w for run in runs for w in run.workers]
    assert_alive(everyone, when)
    for run, outcome in zip(runs, outcomes, strict=True):
        assert outcome.state_keys == KEYS, outcome
        outcome.assert_exact(run.guarantee)
    stop_all(everyone)


def test_sigkill_of_the_leading_broker(healthy_cluster, kafka, model_file, start_worker, tmp_path) -> None:
    """The broker X that leads every input and state partition and coordinates the groups is
    SIGKILLed mid-stream and started again 15 s later: leaders and the coordinator move to the
    two left (min.insync.replicas 2), the workers wait it out, nothing is lost or doubled. Both
    guarantees at once, each its own group of two workers."""
    cluster = healthy_cluster
    model = model_file("lstm", (32, 16))
    group_coordinator(cluster, f"probe-{uuid.uuid4().hex[:8]}", tmp_path)  # creates __consumer_offsets if need be
    cluster.wait_healthy(timeout=60)
    node = cluster.leader("__consumer_offsets", 0)  # one that leads a coordinator partition
    runs = []
    for guarantee in GUARANTEES:
        topics = new_topics()
        group_id = _group_coordinated_by(cluster, node, f"group-{topics.input}")
        _topics_led_by(cluster, node, topics)
        args = worker_args(guarantee, "--group-id", group_id)
        runs.append(GroupRun(guarantee, topics, group_id, [start_worker(model, topics, *args) for _ in range(2)]))
    everyone = [w for run in runs for w in run.workers]
    for w in everyone:
        w.wait_ready(timeout=120)
    for run in runs:
        coordinator = group_coordinator(cluster, run.group_id, tmp_path)
        assert coordinator == node, f"group {run.group_id} coordinated by {coordinator}, not {node}"
    controller = cluster.admin().describe_cluster(request_timeout=10).result().controller.id
    print(f"node X={node} (controller {controller}) leads the topics and groups of {[r.group_id for r in runs]}")

    for seed, run in enumerate(runs, start=42):
        run.start_stream(kafka, events_per_key=90, rate=300, seed=seed)
    wait_for(lambda: all(run.quarter_predicted() for run in runs), 60, "a quarter of the predictions", everyone)
    for run in runs:
        run.watch_recovery(kafka, tmp_path)
    cluster.kill_node(node)
    killed = time.monotonic()
    wait_for(lambda: time.monotonic() - killed >= SIGKILL_DOWN_S, SIGKILL_DOWN_S + 5, f"node {node} down", everyone)
    start_node(cluster, node)
    cluster.wait_healthy(timeout=90, topics=[t for run in runs for t in (run.topics.input, run.topics.state)])
    print(f"node {node} back {time.monotonic() - killed:.1f} s after its SIGKILL")
    outcomes = [run.finish(kafka, model, "SIGKILL leader+coordinator", tmp_path) for run in runs]
    assert_exact(runs, outcomes, "after the fault")


# -- 3. rolling restart -------------------------------------------------------------------


def test_rolling_restart_under_load(healthy_cluster, kafka, model_file, start_worker, tmp_path) -> None:
    """Each broker in turn stopped gracefully (controlled shutdown: its leaders move first),
    started again and waited for until every replica is back in sync, under a steady stream.
    Both guarantees at once, each its own group of two workers."""
    cluster = healthy_cluster
    model = model_file("lstm", (32, 16))
    runs = []
    for guarantee in GUARANTEES:
        topics = new_topics()
        create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS, replication_factor=3)
        workers = [start_worker(model, topics, *worker_args(guarantee)) for _ in range(2)]
        runs.append(GroupRun(guarantee, topics, f"group-{topics.input}", workers))
    everyone = [w for run in runs for w in run.workers]
    for w in everyone:
        w.wait_ready(timeout=120)
    watched = [t for run in runs for t in (run.topics.input, run.topics.output, run.topics.state, run.topics.dlq)]

    for seed, run in enumerate(runs, start=43):
        run.start_stream(kafka, events_per_key=160, rate=260, seed=seed)
    wait_for(lambda: all(run.quarter_predicted() for run in runs), 60, "a quarter of the predictions", everyone)
    for run in runs:
        run.watch_recovery(kafka, tmp_path)
    rolled = time.monotonic()
    for node in cluster.node_ids:
        began = time.monotonic()
        cluster.stop_node(node)
        stopped = time.monotonic()
        assert_alive(everyone, f"after node {node} stopped")
        start_node(cluster, node)
        back = time.monotonic()
        cluster.wait_healthy(timeout=90, topics=watched)
        assert_alive(everyone, f"after node {node} came back")
        print(
            f"node {node}: stopped in {stopped - began:.1f} s, started in {back - stopped:.1f} s, in sync "
            f"{time.monotonic() - back:.1f} s later; {time.monotonic() - rolled:.1f} s into the rolling restart"
        )
    outcomes = [run.finish(kafka, model, "rolling restart", tmp_path) for run in runs]
    assert_exact(runs, outcomes, "after the rolling restart")
