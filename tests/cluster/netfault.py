"""Network faults between a client and the cluster, on this machine only.

`Namespace`: a network namespace joined to the host by a veth pair on a /30 of 198.18.0.0/15
(RFC 2544's benchmarking range: never a real host's); a process run in it reaches the host end
of the veth and nothing else (no default route), and nftables in it drops a share of its
packets to the host end (`loss`) or all of them both ways (`blackhole`). `Toxiproxy`: the TCP
proxy between the host end and the brokers' EXTERNAL listeners on 127.0.0.1, which adds
latency. The brokers advertise the host end (deploy/kafka/cluster.sh KAFKA_EXTERNAL_HOST), so a
client in the namespace that bootstraps through the proxies stays behind them.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TEST_RANGE = ipaddress.ip_network("198.18.0.0/15")
DEFAULT_SUBNET = ipaddress.ip_network("198.18.0.0/30")  # host end 198.18.0.1
_TABLE = "lstmf"


class NetfaultError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetfaultError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def host_addresses() -> set[ipaddress.IPv4Address]:
    """IPv4 addresses assigned on this (the host's) network namespace (none known without `ip`)."""
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return set()
    return {ipaddress.ip_interface(line.split()[3]).ip for line in out.splitlines() if len(line.split()) > 3}


def free_subnet(preferred: ipaddress.IPv4Network = DEFAULT_SUBNET) -> ipaddress.IPv4Network:
    """`preferred`, or the first /30 of 198.18.0.0/15 none of whose addresses the host has
    (another Namespace, e.g. of a test session running beside this one, holds it)."""
    used = host_addresses()
    candidates = [preferred, *TEST_RANGE.subnets(new_prefix=30)]
    for subnet in candidates:
        if not any(addr in subnet for addr in used):
            return subnet
    raise NetfaultError("every /30 of 198.18.0.0/15 is in use on this host")


def netns_available() -> str | None:
    """Why Namespace cannot work here (None when it can): it needs root, `ip netns` and `nft`."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


class Namespace:
    """`with Namespace() as ns:` a network namespace lstmf-<random> whose veth end is the
    subnet's second address, the host end its first (e.g. 198.18.0.2 and 198.18.0.1)."""

    def __init__(self, subnet: str | ipaddress.IPv4Network = DEFAULT_SUBNET) -> None:
        self.subnet = ipaddress.ip_network(subnet)
        if self.subnet.prefixlen != 30 or not self.subnet.subnet_of(TEST_RANGE):
            raise ValueError(f"{self.subnet}: expected a /30 within {TEST_RANGE}")
        host, ns = list(self.subnet.hosts())
        self.host_ip, self.ns_ip = str(host), str(ns)
        tag = uuid.uuid4().hex[:8]
        self.name = f"lstmf-{tag}"
        self.veth_host, self.veth_ns = f"lfh{tag}", f"lfn{tag}"  # at most 15 characters
        self._created = False

    def __enter__(self) -> Namespace:
        if ipaddress.ip_address(self.host_ip) in host_addresses():
            raise NetfaultError(f"{self.host_ip} is already on this host (another namespace?); use free_subnet()")
        _ip("netns", "add", self.name)
        self._created = True
        atexit.register(self.close)
        try:
            _ip("link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.veth_host)
            _ip("link", "set", self.veth_host, "up")
            _ip("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.veth_ns)
            _ip("-n", self.name, "link", "set", self.veth_ns, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
            # the /30's own route reaches the host end; no default route: nothing else is reachable
            self._nft(
                f"add table inet {_TABLE}\n"
                f"add chain inet {_TABLE} output {{ type filter hook output priority 0 ; policy accept ; }}\n"
                f"add chain inet {_TABLE} input {{ type filter hook input priority 0 ; policy accept ; }}\n"
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete the namespace: its nftables rules and both ends of the veth go with it."""
        if not self._created:
            return
        self._created = False
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "delete", self.veth_host], capture_output=True, timeout=30)
        atexit.unregister(self.close)

    def run(self, args: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
        """A process inside the namespace (`ip netns exec`)."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *args], **popen_kwargs)

    def _nft(self, script: str) -> None:
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "-f", "-"], input=script, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise NetfaultError(f"nft in {self.name}: {done.stderr.strip()}\n{script}")

    def heal(self) -> None:
        """No more loss or blackhole."""
        self._nft(f"flush table inet {_TABLE}\n")

    def loss(self, percent: float) -> None:
        """Drop `percent` % of the packets the namespace sends to the host end (at random)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss percent must be within 0..100, got {percent}")
        self._nft(
            f"flush table inet {_TABLE}\n"
            f"add rule inet {_TABLE} output ip daddr {self.host_ip} numgen random mod 100 < {round(percent)} drop\n"
        )

    def blackhole(self) -> None:
        """Drop everything between the namespace and the host end, both ways."""
        self._nft(
            f"flush table inet {_TABLE}\n"
            f"add rule inet {_TABLE} output ip daddr {self.host_ip} drop\n"
            f"add rule inet {_TABLE} input ip saddr {self.host_ip} drop\n"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toxiproxy_binary() -> str:
    """deploy/toxiproxy/fetch.sh: builds toxiproxy-server into the user cache once."""
    done = subprocess.run([REPO / "deploy/toxiproxy/fetch.sh"], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise NetfaultError(f"deploy/toxiproxy/fetch.sh failed:\n{done.stderr}")
    return done.stdout.strip()


class Toxiproxy:
    """`with Toxiproxy(ns.host_ip, cluster.external_ports) as proxy:` a toxiproxy-server (API on a
    free 127.0.0.1 port) with one proxy per port: listen_host:port -> 127.0.0.1:port."""

    def __init__(self, listen_host: str, ports: Sequence[int], upstream_host: str = "127.0.0.1") -> None:
        self.listen_host = listen_host
        self.ports = list(ports)
        self.upstream_host = upstream_host
        self.api_port = 0
        self.proc: subprocess.Popen | None = None
        self._logdir = Path(tempfile.mkdtemp(prefix="toxiproxy-"))
        self.log_path = self._logdir / "toxiproxy.log"

    @property
    def proxies(self) -> list[str]:
        return [f"broker-{i}" for i in range(1, len(self.ports) + 1)]

    def __enter__(self) -> Toxiproxy:
        binary = toxiproxy_binary()
        self.api_port = free_port()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [binary, "-host", "127.0.0.1", "-port", str(self.api_port)], stdout=log, stderr=subprocess.STDOUT
            )
        atexit.register(self.close)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    self._call("GET", "/version")
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise NetfaultError(f"toxiproxy-server did not start:\n{self.log()}") from None
                    time.sleep(0.05)
            for name, port in zip(self.proxies, self.ports, strict=True):
                self._call(
                    "POST",
                    "/proxies",
                    {
                        "name": name,
                        "listen": f"{self.listen_host}:{port}",
                        "upstream": f"{self.upstream_host}:{port}",
                        "enabled": True,
                    },
                )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self._logdir, ignore_errors=True)
        atexit.unregister(self.close)

    def log(self) -> str:
        return self.log_path.read_text()[-5000:] if self.log_path.exists() else ""

    def _call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise NetfaultError(f"toxiproxy {method} {path}: {exc.code} {exc.read().decode()}") from exc
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError:  # /version answers in plain text
            return text

    def latency(self, ms: int, jitter: int = 0) -> None:
        """Delay the data of every proxy by `ms` (± `jitter`) ms, each direction (replacing the
        latency set before)."""
        for name in self.proxies:
            for stream in ("upstream", "downstream"):
                with contextlib.suppress(NetfaultError):  # none yet
                    self._call("DELETE", f"/proxies/{name}/toxics/latency-{stream}")
                self._call(
                    "POST",
                    f"/proxies/{name}/toxics",
                    {
                        "name": f"latency-{stream}",
                        "type": "latency",
                        "stream": stream,
                        "toxicity": 1.0,
                        "attributes": {"latency": int(ms), "jitter": int(jitter)},
                    },
                )

    def clear(self) -> None:
        """Remove every toxic (POST /reset, which also re-enables the proxies)."""
        self._call("POST", "/reset")
