"""A real Prometheus (Debian's package, loopback) scrapes a running worker: the count it reports
equals what the worker processed, and the repository's alert rules evaluate on real series. The
Grafana dashboard's metric names and the Kubernetes probes are checked against the same worker."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    K8S,
    PROMETHEUS,
    dashboard_exprs,
    exported_metric_names,
    load_yaml_docs,
    promql_metric_names,
)
from tests.integration.conftest import Topics, WorkerProcess, free_port
from tests.integration.kafka_io import metric, produce
from worker.config import KafkaConfig
from worker.synthetic import produce_synthetic

pytestmark = pytest.mark.integration

KEYS, EVENTS, BAD = 20, 10, 3


class Prometheus:
    """`prometheus` on a free loopback port with a temporary config and data directory."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: `make tools` installs Debian's prometheus package")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS / "alerts.yml")],
            "scrape_configs": [{"job_name": "lstm-worker", "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        self._log = open(workdir / "prometheus.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        self.log_path = workdir / "prometheus.log"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def wait(self, what: str, check: Any, timeout: float = 45.0) -> Any:
        """Poll `check()` until it returns a true value; fail loudly after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log_path.read_text()[-3000:]}"
            try:
                if value := check():
                    return value
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        pytest.fail(f"Prometheus: {what} not seen in {timeout} s\n{self.log_path.read_text()[-3000:]}")

    def value(self, query: str) -> float | None:
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator:
    started: list[Prometheus] = []

    def start(*targets: str) -> Prometheus:
        workdir = tmp_path / f"prometheus-{len(started)}"
        workdir.mkdir()
        started.append(Prometheus(workdir, list(targets)))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def live_worker(broker: str, model_file, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One ready worker for the module, having predicted KEYS x EVENTS events and dead-lettered BAD
    records (fresh topics and group, like the `topics` and `start_worker` fixtures give)."""
    kafka, run = KafkaConfig(broker), uuid.uuid4().hex[:10]
    topics = Topics(f"events-{run}", f"predictions-{run}")
    produce_synthetic(
        kafka, topic=topics.input, keys=KEYS, events_per_key=EVENTS, features=4, rate=0, seed=5, partitions=2
    )
    produce(kafka, topics.input, [(b"bad-%d" % i, b"\xc1 not msgpack") for i in range(BAD)])
    worker = WorkerProcess(broker, model_file("lstm", (32, 16)), topics, tmp_path_factory.mktemp("worker") / "log")
    try:
        worker.wait_ready()
        deadline = time.monotonic() + 60
        while metric(text := worker.get("/metrics")[1], "lstm_worker_events_total", result="predicted") < KEYS * EVENTS:
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.2)
        assert metric(text, "lstm_worker_events_total", result="dead_letter") == BAD
        yield worker
        assert worker.stop() == 0, worker.log()
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()


def test_prometheus_scrapes_the_worker_and_counts_what_it_processed(live_worker, prometheus_for):
    worker = live_worker
    prometheus = prometheus_for(f"127.0.0.1:{worker.metrics_port}")
    prometheus.wait("the worker's target up", lambda: prometheus.value('up{job="lstm-worker"}') == 1)

    predicted = prometheus.wait(
        "lstm_worker_events_total{result=predicted}",
        lambda: prometheus.value('lstm_worker_events_total{job="lstm-worker", result="predicted"}'),
    )
    worker_count = metric(worker.get("/metrics")[1], "lstm_worker_events_total", result="predicted")
    assert predicted == worker_count == KEYS * EVENTS
    assert prometheus.value('sum(lstm_worker_dead_letters_total{reason="decode"})') == BAD
    assert prometheus.value("lstm_worker_ready") == 1
    assert prometheus.value("sum(lstm_worker_assigned_partitions)") == 2

    # the repository's alert rules load and evaluate without error against real series; none fires
    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules) else []

    rules = prometheus.wait("the alert rules evaluated", evaluated)
    assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []
    assert [r["name"] for r in rules if r["state"] != "inactive"] == []


def test_dashboard_and_probes_match_the_live_worker(live_worker):
    worker = live_worker
    exported = exported_metric_names(worker.get("/metrics")[1])
    for expr in dashboard_exprs():
        names = promql_metric_names(expr)
        assert names and names <= exported, f"{names - exported} not exported by the worker: {expr}"

    (deployment,) = [d for d in load_yaml_docs(K8S / "deployment.yaml") if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        status, _ = worker.get(container[probe]["httpGet"]["path"])
        assert status == 200, probe
