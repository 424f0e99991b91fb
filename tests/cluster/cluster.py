"""A three-node Kafka cluster of our own (deploy/kafka/cluster.sh) that a test stops, kills and
restarts node by node, and where a partition's leader or a group's coordinator lives."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

REPO = Path(__file__).resolve().parents[2]
KAFKA = REPO / "deploy/kafka"
NODE_IDS = (1, 2, 3)
INTERNAL_TOPICS = ("__consumer_offsets", "__transaction_state")


def java_string_hash(text: str) -> int:
    """Java's String.hashCode(): 31-polynomial over the UTF-16 code units, in int32."""
    units = text.encode("utf-16-be")
    h = 0
    for i in range(0, len(units), 2):
        h = (31 * h + int.from_bytes(units[i : i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def kafka_partition_for(key: str, partitions: int) -> int:
    """The coordinator partition Kafka gives a transactional or group id: Utils.abs(hashCode) % n,
    where Utils.abs(Integer.MIN_VALUE) is 0 (Math.abs would leave it negative)."""
    h = java_string_hash(key)
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def _alive(pid: int) -> bool:
    """Running and not a zombie (a killed node stays one until init reaps it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "X")
    return state not in ("Z", "X")


class ClusterError(RuntimeError):
    pass


class LocalCluster:
    """The scripts' cluster on ports port..port+2 (clients), controller_port..+2 and, with
    external_host, external_port..+2 (the EXTERNAL listener, advertised as external_host)."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        controller_port: int,
        external_host: str | None = None,
        external_port: int | None = None,
        **settings: str,
    ) -> None:
        """`settings`: more cluster.sh variables, e.g. KAFKA_HEAP="512m"."""
        self.data_dir = Path(data_dir)
        self.port = port
        self.external_host = external_host
        self.external_port = external_port
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(controller_port),
            "KAFKA_CLUSTER_DIR": str(self.data_dir),
            **settings,
        }
        self.env.pop("KAFKA_NODES", None)
        self._admin: AdminClient | None = None
        if external_host is not None:
            if external_port is None:
                raise ValueError("external_host needs external_port")
            self.env.update(KAFKA_EXTERNAL_HOST=external_host, KAFKA_EXTERNAL_PORT=str(external_port))

    # -- addresses ----------------------------------------------------------------

    @property
    def node_ids(self) -> tuple[int, ...]:
        return NODE_IDS

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.client_port(i)}" for i in NODE_IDS)

    @property
    def external_bootstrap(self) -> str:
        """Through the proxies: what a client in a network namespace bootstraps with."""
        if self.external_host is None:
            raise ClusterError("this cluster has no EXTERNAL listener")
        return ",".join(f"{self.external_host}:{p}" for p in self.external_ports)

    @property
    def external_ports(self) -> list[int]:
        if self.external_port is None:
            raise ClusterError("this cluster has no EXTERNAL listener")
        return [self.external_port + i - 1 for i in NODE_IDS]

    def client_port(self, node_id: int) -> int:
        return self.port + node_id - 1

    def node_dir(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}"

    # -- processes ----------------------------------------------------------------

    def pid(self, node_id: int) -> int | None:
        try:
            return int((self.node_dir(node_id) / "pid").read_text())
        except (OSError, ValueError):
            return None

    def running(self, node_id: int) -> bool:
        pid = self.pid(node_id)
        return pid is not None and _alive(pid)

    def down_nodes(self) -> list[int]:
        return [i for i in NODE_IDS if not self.running(i)]

    def _script(self, name: str, nodes: Iterable[int] | None, timeout: float) -> str:
        env = dict(self.env)
        if nodes is not None:
            env["KAFKA_NODES"] = " ".join(map(str, nodes))
        done = subprocess.run([KAFKA / name], env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise ClusterError(f"{name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout.strip()

    def start(self) -> str:
        """Every node not running; returns the bootstrap list once a client sees three brokers."""
        return self._script("cluster.sh", None, timeout=240)

    def start_nodes(self, *node_ids: int) -> None:
        self._script("cluster.sh", node_ids, timeout=240)

    def stop_node(self, node_id: int) -> None:
        """Graceful: SIGTERM, controlled shutdown (SIGKILL after 30 s)."""
        self._script("cluster-stop.sh", [node_id], timeout=90)

    def kill_node(self, node_id: int, timeout: float = 10.0) -> None:
        """SIGKILL, then until the process is gone."""
        pid = self.pid(node_id)
        if pid is None or not _alive(pid):
            return
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            if time.monotonic() > deadline:
                raise ClusterError(f"node {node_id} (pid {pid}) still alive {timeout} s after SIGKILL")
            time.sleep(0.05)

    def stop_all(self) -> None:
        self._admin = None  # destroyed now, not left reconnecting to the stopped nodes
        self._script("cluster-stop.sh", None, timeout=90)

    # -- what the cluster says ------------------------------------------------------

    def admin(self) -> AdminClient:
        """One admin client for the cluster's life (librdkafka reconnects to nodes that come back)."""
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "metadata.recovery.strategy": "none"})
        return self._admin

    def leader(self, topic: str, partition: int, timeout: float = 10.0) -> int:
        """Node id of the partition's leader (-1 while it has none)."""
        metadata = self.admin().list_topics(topic, timeout=timeout)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or partition not in info.partitions:
            raise ClusterError(f"no metadata for {topic}[{partition}]: {info.error if info else 'no topic'}")
        return int(info.partitions[partition].leader)

    def group_coordinator(self, group_id: str, timeout: float = 30.0) -> int:
        """Node id of the group's coordinator, as the broker reports it (FindCoordinator); the
        first ask may create __consumer_offsets, so it is retried until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                described = self.admin().describe_consumer_groups([group_id], request_timeout=10)[group_id].result()
                return int(described.coordinator.id)
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"no coordinator for group {group_id!r}: {exc}") from exc
                time.sleep(0.5)

    def transaction_coordinator(self, transactional_id: str, timeout: float = 10.0) -> int:
        """Node id of the leader of the __transaction_state partition of the id (which must exist:
        a transactional producer's first init creates it)."""
        metadata = self.admin().list_topics("__transaction_state", timeout=timeout)
        info = metadata.topics.get("__transaction_state")
        if info is None or info.error is not None or not info.partitions:
            raise ClusterError("__transaction_state does not exist yet (no transactional producer has initialised)")
        return self.leader("__transaction_state", kafka_partition_for(transactional_id, len(info.partitions)))

    def reported_transaction_coordinators(self, *transactional_ids: str) -> dict[str, int]:
        """What the broker itself answers (deploy/kafka/AdminProbe.java, Kafka's Admin client),
        for ids a transactional producer has initialised."""
        ids = list(transactional_ids)
        libs = subprocess.run([KAFKA / "fetch.sh"], capture_output=True, text=True, check=True).stdout.strip()
        done = subprocess.run(
            ["java", "-cp", f"{libs}/*", KAFKA / "AdminProbe.java", "transaction-coordinator", self.bootstrap, *ids],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise ClusterError(f"AdminProbe failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
        return {tid: int(node) for tid, node in (line.rsplit(" ", 1) for line in done.stdout.splitlines())}

    def health(self, topics: Iterable[str] = ()) -> list[str]:
        """What keeps the cluster from healthy (empty when healthy): brokers missing from the
        metadata, partitions (of `topics` and the internal topics that exist) without a leader or
        with fewer in-sync replicas than replicas."""
        try:
            metadata = self.admin().list_topics(timeout=5)
        except KafkaException as exc:
            return [f"no metadata: {exc}"]
        problems = []
        brokers = sorted(metadata.brokers)
        if brokers != list(NODE_IDS):
            problems.append(f"brokers in the metadata: {brokers}")
        wanted = list(topics) + [t for t in INTERNAL_TOPICS if t in metadata.topics]
        for topic in wanted:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                problems.append(f"{topic}: {info.error if info else 'missing'}")
                continue
            for p, part in sorted(info.partitions.items()):
                if part.leader < 0 or sorted(part.isrs) != sorted(part.replicas) or len(part.replicas) != len(NODE_IDS):
                    problems.append(f"{topic}[{p}] leader={part.leader} replicas={part.replicas} isr={part.isrs}")
        return problems

    def wait_healthy(self, timeout: float = 120.0, topics: Iterable[str] = ()) -> None:
        """Until all three brokers are in the metadata and every partition of `topics` (and of
        the internal topics) has a leader and its full replica set in sync."""
        topics = list(topics)
        deadline = time.monotonic() + timeout
        while problems := self.health(topics):
            if time.monotonic() > deadline:
                raise ClusterError(f"cluster not healthy after {timeout} s: {'; '.join(problems[:10])}")
            time.sleep(0.5)
