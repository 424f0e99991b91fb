"""Worker processes for the cluster's fault tests: one run inside a network namespace (so that it
reaches the cluster only through the proxies, and a fault cuts it alone off), bounded waits that
fail with the workers' logs, a rate-limited synthetic stream in a thread; and the fixtures
`start_ns_worker` (workers in the test's namespace) and `netfault_cleaned_up` (autouse where
imported: the namespace, its veth and the proxies gone after the test), which a test module
imports by name."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from tests.cluster.cluster import LocalCluster
from tests.cluster.netfault import Namespace, Toxiproxy
from tests.integration.conftest import REPO, Topics, WorkerProcess
from tests.integration.kafka_io import metric
from worker.config import KafkaConfig
from worker.synthetic import Produced, produce_synthetic

# the lines of a worker's log that tell a fault's story (the rest is per-round noise)
_NOTABLE = re.compile(
    r" (WARNING|ERROR|CRITICAL) |assigned partitions|revoked partitions|restored|transaction|Traceback|Error"
)


class NamespacedWorker(WorkerProcess):
    """`python -m worker run` inside `namespace` (`ip netns exec`, which execs the command: the
    process is the worker, so a signal reaches it directly), bootstrapping through `bootstrap`
    (the proxied EXTERNAL addresses) and serving its metrics on the namespace's own address."""

    metrics_bind = "0.0.0.0"

    def __init__(
        self, namespace: Namespace, bootstrap: str, model: Path, topics: Topics, log_path: Path, *extra: str
    ) -> None:
        self.namespace = namespace
        self.metrics_host = namespace.ns_ip  # a new namespace has every port free: free_port()'s will do
        super().__init__(bootstrap, model, topics, log_path, *extra)

    def _launch(self, args: list[str]) -> subprocess.Popen:
        return self.namespace.run(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)


def warm_group_coordinator(kafka: KafkaConfig, group: str, topic: str, timeout: float = 60.0) -> float:
    """Until the group's coordinator answers an offset fetch (the seconds it took). On a new
    cluster the first lookup creates __consumer_offsets; the admin API's group calls are not used
    for this: there a lookup that times out can hang the next one or abort the process
    (librdkafka 2.16: `rd_kafka_enq_once_del_source_return: Assertion eonce->refcnt > 0`,
    confluentinc/librdkafka#4605), and the worker's start-up ACL check (describe_consumer_groups,
    worker/kafka/access.py) gives up with a TimeoutError after 30 s."""
    consumer = Consumer(kafka.consumer(group))
    started = time.monotonic()
    try:
        while True:
            try:
                consumer.committed([TopicPartition(topic, 0)], timeout=5)
                return time.monotonic() - started
            except KafkaException as exc:
                if time.monotonic() - started > timeout:
                    pytest.fail(f"the coordinator of group {group!r} did not answer within {timeout} s: {exc}")
                time.sleep(0.5)
    finally:
        consumer.close()


def gauge(worker: WorkerProcess, name: str) -> float | None:
    """One sample of the worker's /metrics; None while the endpoint does not answer."""
    try:
        return metric(worker.get("/metrics")[1], name)
    except OSError:
        return None


def excerpt(worker: WorkerProcess, lines: int = 80) -> str:
    """The notable lines of the worker's whole log (rebalances, warnings, errors, transactions)."""
    worker._log.flush()
    text = worker.log_path.read_text().splitlines()
    notable = [line for line in text if _NOTABLE.search(line)]
    return "\n".join(notable[-lines:])


def logs(workers: Sequence[WorkerProcess]) -> str:
    return "\n".join(
        f"\n----- {w.log_path.name} (pid {w.proc.pid}, exit {w.proc.poll()}) -----\n{excerpt(w)}" for w in workers
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str, workers: Sequence[WorkerProcess] = ()) -> float:
    """Until `condition()` (the seconds it took); fails with the workers' logs past `timeout`, or
    as soon as one of them exits."""
    started = time.monotonic()
    while not condition():
        for w in workers:
            if w.proc.poll() is not None:
                pytest.fail(f"{w.log_path.name} exited with {w.proc.returncode} waiting for {what}:{logs(workers)}")
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}:{logs(workers)}")
        time.sleep(0.2)
    return time.monotonic() - started


class Stream(threading.Thread):
    """produce_synthetic in a thread; `finish` joins it and raises what it raised."""

    def __init__(
        self, kafka: KafkaConfig, topic: str, keys: int, events: int, rate: float, partitions: int, seed: int = 21
    ) -> None:
        super().__init__(name="synthetic-stream", daemon=True)
        self.kafka, self.topic = kafka, topic
        self.keys, self.events, self.rate, self.partitions, self.seed = keys, events, rate, partitions, seed
        self.result: Produced | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = produce_synthetic(
                self.kafka,
                topic=self.topic,
                keys=self.keys,
                events_per_key=self.events,
                features=4,
                rate=self.rate,
                seed=self.seed,
                partitions=self.partitions,
            )
        except BaseException as exc:  # re-raised by finish
            self.error = exc

    def finish(self, timeout: float) -> Produced:
        self.join(timeout)
        if self.is_alive():
            pytest.fail(f"the synthetic stream did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class Timed(threading.Thread):
    """`call()` in a thread, its result (or exception) kept for `value`."""

    def __init__(self, call: Callable[[], float]) -> None:
        super().__init__(daemon=True)
        self._call = call
        self.result: float | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as exc:  # re-raised by value
            self.error = exc

    def value(self, timeout: float) -> float:
        self.join(timeout)
        if self.is_alive():
            pytest.fail(f"still waiting after {timeout} s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@pytest.fixture(autouse=True)
def netfault_cleaned_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every other fixture's teardown: the test's namespace, its veth and its proxies gone."""
    yield
    ns: Namespace | None = getattr(request.node, "netfault_namespace", None)
    proxy: Toxiproxy | None = getattr(request.node, "netfault_proxy", None)
    if ns is not None:
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
        assert ns.name not in left, f"namespace {ns.name} left behind: {left}"
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=30).stdout
        assert ns.veth_host not in links, f"veth {ns.veth_host} left behind"
    if proxy is not None:
        assert proxy.proc is not None and proxy.proc.poll() is not None, "toxiproxy-server left running"


@pytest.fixture
def start_ns_worker(
    request: pytest.FixtureRequest,
    healthy_cluster: LocalCluster,
    namespace: Namespace,
    toxiproxy: Toxiproxy,
    tmp_path: Path,
) -> Iterator:
    """Workers inside the namespace, bootstrapping through the proxies; killed (before the
    namespace goes) if the test left them running."""
    request.node.netfault_namespace, request.node.netfault_proxy = namespace, toxiproxy
    started: list[NamespacedWorker] = []

    def start(model: Path, topics, *extra: str) -> NamespacedWorker:
        log = tmp_path / f"ns-worker-{len(started)}.log"
        worker = NamespacedWorker(namespace, healthy_cluster.external_bootstrap, model, topics, log, *extra)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()


def proxy_latency(proxy: Toxiproxy, node_id: int, ms: int) -> None:
    """Delay the data through one broker's proxy only (each direction). Toxiproxy.latency sets
    every proxy; this posts the same toxics to one (its proxies are broker-1..3, in node order)."""
    name = proxy.proxies[node_id - 1]
    for stream in ("upstream", "downstream"):
        proxy._call(  # the harness's own API wrapper (tests/cluster/netfault.py)
            "POST",
            f"/proxies/{name}/toxics",
            {
                "name": f"latency-{stream}",
                "type": "latency",
                "stream": stream,
                "toxicity": 1.0,
                "attributes": {"latency": int(ms), "jitter": 0},
            },
        )


def assignment(worker: WorkerProcess) -> set[int]:
    """The worker's partitions as its log tells (assigned and revoked lines replayed in order)."""
    worker._log.flush()
    held: set[int] = set()
    for verb, listed in re.findall(r"(assigned|revoked) partitions=\[([0-9, ]*)\]", worker.log_path.read_text()):
        parts = {int(p) for p in listed.split(", ") if p}
        held = held | parts if verb == "assigned" else held - parts
    return held
