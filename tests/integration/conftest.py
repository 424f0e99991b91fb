"""Integration fixtures: a real Kafka broker (started once per session from deploy/kafka
unless KAFKA_BOOTSTRAP_SERVERS names one), fresh topics per test, worker processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from worker.config import KafkaConfig

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """A broker of our own (deploy/kafka), which a test may stop and start on the same data."""

    def __init__(self, data_dir: Path, **settings: str) -> None:
        """`settings`: more start.sh variables, e.g. KAFKA_SECURITY="sasl" (deploy/kafka/sasl.sh)."""
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(free_port()),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_DIR": str(data_dir),
            **settings,
        }
        self.bootstrap = f"127.0.0.1:{self.env['KAFKA_PORT']}"

    def start(self) -> None:
        script = REPO / "deploy/kafka/start.sh"
        started = subprocess.run([script], env=self.env, capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            pytest.fail(f"local Kafka did not start:\n{started.stdout}\n{started.stderr}")

    def stop(self) -> None:
        subprocess.run([REPO / "deploy/kafka/stop.sh"], env=self.env, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    local = LocalBroker(tmp_path_factory.mktemp("kafka"))
    local.start()
    try:
        yield local.bootstrap
    finally:
        local.stop()


@pytest.fixture(scope="session")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Schema Registry (deploy/registry: Apicurio, in memory) for the session, unless
    SCHEMA_REGISTRY_URL names one; the Confluent API's base URL."""
    given = os.environ.get("SCHEMA_REGISTRY_URL")
    if given:
        yield given
        return
    env = {**os.environ, "REGISTRY_PORT": str(free_port()), "REGISTRY_DIR": str(tmp_path_factory.mktemp("registry"))}
    started = subprocess.run([REPO / "deploy/registry/start.sh"], env=env, capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        pytest.fail(f"the Schema Registry did not start:\n{started.stdout}\n{started.stderr}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([REPO / "deploy/registry/stop.sh"], env=env, capture_output=True, timeout=60)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker for this test alone (outage tests stop it)."""
    local = LocalBroker(tmp_path / "kafka")
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def kafka(broker: str) -> KafkaConfig:
    return KafkaConfig(broker)


@dataclass(frozen=True)
class Topics:
    input: str
    output: str

    @property
    def state(self) -> str:
        return self.input + ".state"

    @property
    def dlq(self) -> str:
        return self.input + ".dlq"


@pytest.fixture
def topics() -> Topics:
    run = uuid.uuid4().hex[:10]
    return Topics(f"events-{run}", f"predictions-{run}")


class WorkerProcess:
    """`python -m worker run` as a real process, stopped by a signal like in production."""

    metrics_bind = "127.0.0.1"  # where it serves /metrics
    metrics_host = "127.0.0.1"  # where the test reaches it

    def __init__(self, broker: str, model: Path, topics: Topics, log_path: Path, *extra: str) -> None:
        self.metrics_port = free_port()
        self.log_path = log_path
        args = [
            sys.executable,
            "-m",
            "worker",
            "run",
            "--bootstrap-servers",
            broker,
            "--model",
            str(model),
            "--input-topic",
            topics.input,
            "--output-topic",
            topics.output,
            "--metrics-host",
            self.metrics_bind,
            "--metrics-port",
            str(self.metrics_port),
            "--group-id",
            f"group-{topics.input}",
            "--commit-interval-ms",
            "500",
            *extra,
        ]
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = self._launch(args)

    def _launch(self, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.metrics_host}:{self.metrics_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_http(self, deadline: float) -> bool:
        """Until the endpoint answers (True), or the deadline passes (False)."""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.get("/healthz")
                return True
            except OSError:
                time.sleep(0.2)
        return False

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        pytest.fail(f"worker not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-5000:]

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"worker ignored SIGTERM for {timeout} s:\n{self.log()}")
        self._log.close()
        return code


@pytest.fixture
def start_worker(broker: str, tmp_path: Path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(model: Path, topics: Topics, *extra: str, bootstrap: str | None = None) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = WorkerProcess(bootstrap or broker, model, topics, log, *extra)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def model_file(model_dir: Path):
    """Saved reference-style models, built once per (cell, units) for the session."""
    from worker.model.reference import make_reference_model, save_model

    made: dict[tuple[str, tuple[int, ...], int], Path] = {}

    def get(cell: str = "lstm", units: tuple[int, ...] = (100, 200), seed: int = 3) -> Path:
        if (cell, units, seed) not in made:
            path = model_dir / f"{cell}-{'-'.join(map(str, units))}-{seed}.keras"
            save_model(make_reference_model(features=4, units=units, cell=cell, seed=seed), str(path))
            made[(cell, units, seed)] = path
        return made[(cell, units, seed)]

    return get
