"""Cluster fixtures: one three-node cluster of our own per session (deploy/kafka/cluster.sh, on
free ports, with the EXTERNAL listener the network-fault harness proxies), every node up and
every partition fully in sync before each test, and the integration fixtures (topics,
model_file, start_worker, kafka) on top of it. `namespace` and `toxiproxy` put a client behind
a network fault (tests/cluster/netfault.py)."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.checks import SESSION_ROWS, forget_admins, summary_table
from tests.cluster.cluster import LocalCluster
from tests.cluster.netfault import Namespace, Toxiproxy, free_subnet, netns_available
from tests.integration.conftest import (  # noqa: F401 (fixtures used here, by name)
    kafka,
    model_dir,
    model_file,
    start_worker,
    topics,
)

SUBNET = free_subnet()  # the namespace's /30: the brokers advertise its host end (198.18.0.1 unless taken)


def _ephemeral_range() -> range:
    """The kernel's source ports for outgoing connections: a port picked there may be taken by
    any client's connection before the broker's JVM binds it, seconds later."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


def _free_run(count: int, exclude: frozenset[int] | set[int] = frozenset()) -> int:
    """A port p with p..p+count-1 free on 127.0.0.1, below the ephemeral range (none of them in
    `exclude`), so that no outgoing connection takes one before the brokers bind them."""
    ephemeral = _ephemeral_range()
    for base in random.Random().sample(range(10_000, ephemeral.start - count), 200):
        ports = range(base, base + count)
        if exclude.intersection(ports):
            continue
        held = []
        try:
            for p in ports:
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return base
    raise RuntimeError(f"no {count} consecutive free ports found below {ephemeral.start}")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    client = _free_run(3)
    taken = set(range(client, client + 3))
    controller = _free_run(3, taken)
    taken |= set(range(controller, controller + 3))
    external = _free_run(3, taken)
    local = LocalCluster(
        tmp_path_factory.mktemp("cluster"),
        port=client,
        controller_port=controller,
        external_host=str(next(SUBNET.hosts())),
        external_port=external,
    )
    try:
        local.start()
        yield local
    finally:
        forget_admins()
        local.stop_all()


@pytest.fixture
def healthy_cluster(cluster: LocalCluster) -> LocalCluster:
    """The cluster with every node a previous test stopped or killed started again, and all
    three brokers in the metadata and every partition's replicas in sync."""
    down = cluster.down_nodes()
    if down:
        cluster.start_nodes(*down)
    cluster.wait_healthy(timeout=120)
    return cluster


@pytest.fixture
def broker(healthy_cluster: LocalCluster) -> str:
    """The bootstrap list of the integration fixtures (start_worker, kafka): the healthy cluster."""
    return healthy_cluster.bootstrap


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    """A network namespace on SUBNET (the host end the brokers advertise); skips without root."""
    why = netns_available()
    if why:
        pytest.skip(why)
    with Namespace(SUBNET) as ns:
        yield ns


@pytest.fixture
def toxiproxy(namespace: Namespace, cluster: LocalCluster) -> Iterator[Toxiproxy]:
    """Toxiproxy on the namespace's host end, one proxy per broker's EXTERNAL listener."""
    with Toxiproxy(namespace.host_ip, cluster.external_ports) as proxy:
        yield proxy


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """This session's fault report rows (tests/cluster/checks.record_row) as a markdown table."""
    if SESSION_ROWS:
        terminalreporter.write_sep("=", "fault report")
        terminalreporter.write_line(summary_table(SESSION_ROWS))
