"""The cluster harness itself: three brokers replicating everything three times with two in
sync required, coordinators where the harness says they are, and a client in a network
namespace that reaches the cluster only through Toxiproxy, cut off by a blackhole and back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import ConfigResource, NewTopic

from tests.cluster.cluster import LocalCluster, java_string_hash, kafka_partition_for
from tests.cluster.netfault import Namespace, Toxiproxy
from tests.integration.kafka_io import read_all
from worker.config import KafkaConfig

pytestmark = [pytest.mark.cluster, pytest.mark.integration]


def _replicas(cluster: LocalCluster, topic: str, timeout: float = 30.0) -> dict[int, list[int]]:
    """partition -> replicas, once the topic is in the metadata."""
    deadline = time.monotonic() + timeout
    while True:
        info = cluster.admin().list_topics(topic, timeout=10).topics.get(topic)
        if info is not None and info.error is None and info.partitions:
            return {p: sorted(part.replicas) for p, part in info.partitions.items()}
        assert time.monotonic() < deadline, f"{topic} not in the metadata after {timeout} s: {info and info.error}"
        time.sleep(0.2)


def test_java_string_hash_is_javas() -> None:
    # String.hashCode() of these in Java 17; the first is Integer.MIN_VALUE, which Utils.abs maps to 0
    assert java_string_hash("polygenelubricants") == -(2**31)
    assert java_string_hash("\U0001f600x-é") == 1276943505
    assert java_string_hash("lstm-worker-txn") == -831600312
    assert kafka_partition_for("polygenelubricants", 4) == 0
    assert kafka_partition_for("lstm-worker-txn", 50) == 831600312 % 50


def test_three_brokers_replicate_everything(healthy_cluster: LocalCluster) -> None:
    cluster = healthy_cluster
    admin = cluster.admin()
    assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]

    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(timeout=30)  # no replication factor
    assert set(map(tuple, _replicas(cluster, topic).values())) == {(1, 2, 3)}
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    assert admin.describe_configs([resource])[resource].result(timeout=30)["min.insync.replicas"].value == "2"

    group = f"smoke-group-{uuid.uuid4().hex[:8]}"
    coordinator = cluster.group_coordinator(group)  # its FindCoordinator creates __consumer_offsets
    offsets = _replicas(cluster, "__consumer_offsets")
    assert set(map(tuple, offsets.values())) == {(1, 2, 3)}
    cluster.wait_healthy(timeout=60)
    assert coordinator == cluster.leader("__consumer_offsets", kafka_partition_for(group, len(offsets)))


def test_transaction_coordinator_is_the_brokers(healthy_cluster: LocalCluster) -> None:
    cluster = healthy_cluster
    # ids on every partition of __transaction_state (4), and the one whose hash is Integer.MIN_VALUE
    ids, covered = ["polygenelubricants"], {0}
    while len(covered) < 4:
        tid = f"smoke-txn-{uuid.uuid4().hex[:8]}"
        if kafka_partition_for(tid, 4) not in covered:
            covered.add(kafka_partition_for(tid, 4))
            ids.append(tid)
    for tid in ids:  # the first init creates __transaction_state
        producer = Producer({"bootstrap.servers": cluster.bootstrap, "transactional.id": tid})
        producer.init_transactions(60)
        producer.flush(5)
    assert set(map(tuple, _replicas(cluster, "__transaction_state").values())) == {(1, 2, 3)}
    cluster.wait_healthy(timeout=60)
    predicted = {tid: cluster.transaction_coordinator(tid) for tid in ids}
    assert cluster.reported_transaction_coordinators(*ids) == predicted


# a plain producer run inside the namespace: argv bootstrap, topic, count, message.timeout.ms, tag
PRODUCE = r"""
import json, sys, time
from confluent_kafka import Producer
bootstrap, topic, count, timeout_ms, tag = sys.argv[1:6]
errors = []
producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": int(timeout_ms),
                     "on_delivery": lambda err, msg: err and errors.append(str(err))})
started = time.monotonic()
for i in range(int(count)):
    producer.produce(topic, f"{tag}-{i}".encode(), f"k{i}".encode())
left = producer.flush(int(timeout_ms) / 1000 + 10)
print(json.dumps({"errors": errors, "left": left, "seconds": time.monotonic() - started}))
"""


def _produce_in(ns: Namespace, bootstrap: str, topic: str, count: int, timeout_ms: int, tag: str) -> dict:
    proc = ns.run(
        [sys.executable, "-c", PRODUCE, bootstrap, topic, str(count), str(timeout_ms), tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=timeout_ms / 1000 + 30)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_netns_client_through_toxiproxy(
    healthy_cluster: LocalCluster, namespace: Namespace, toxiproxy: Toxiproxy
) -> None:
    cluster, kafka = healthy_cluster, KafkaConfig(healthy_cluster.bootstrap)
    topic = f"smoke-net-{uuid.uuid4().hex[:8]}"
    admin = cluster.admin()
    admin.create_topics([NewTopic(topic, num_partitions=3)])[topic].result(timeout=30)
    _replicas(cluster, topic)
    through = cluster.external_bootstrap

    sent = _produce_in(namespace, through, topic, 20, 10000, "before")
    assert sent["errors"] == [] and sent["left"] == 0, sent
    assert sorted(r.value for r in read_all(kafka, topic)) == sorted(f"before-{i}".encode() for i in range(20))

    toxiproxy.latency(150)  # each direction, every proxy: a metadata round trip alone takes 300 ms
    slow = _produce_in(namespace, through, topic, 1, 10000, "slow")
    assert slow["errors"] == [] and slow["seconds"] >= 0.3, slow
    toxiproxy.clear()

    namespace.blackhole()
    cut = _produce_in(namespace, through, topic, 5, 3000, "cut")
    assert len(cut["errors"]) == 5 and all("timed out" in e for e in cut["errors"]), cut

    namespace.heal()
    healed = _produce_in(namespace, through, topic, 5, 10000, "healed")
    assert healed["errors"] == [] and healed["left"] == 0, healed
    values = [r.value for r in read_all(kafka, topic)]
    assert len(values) == 26 and not any(v.startswith(b"cut-") for v in values)
