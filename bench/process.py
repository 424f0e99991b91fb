"""Worker processes under test: `python -m worker run` started as in production, watched through
its metrics endpoint and /proc, stopped with SIGTERM.

A `Reading` is what one look at a worker gives (its metrics, CPU seconds, RSS, the time);
the parts of the benchmark subtract two readings.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from bench.kafka_io import BenchError
from bench.scrape import Samples, by_label, cpu_seconds, parse_metrics, rss_bytes, sample
from worker.config import KafkaConfig

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Reading:
    at: float  # time.monotonic()
    samples: Samples
    cpu_s: float
    rss: int

    def value(self, name: str, **labels: str) -> float:
        return sample(self.samples, name, **labels)

    @property
    def predicted(self) -> int:
        return int(self.value("lstm_worker_predictions_total"))

    @property
    def busy(self) -> dict[str, float]:
        return by_label(self.samples, "lstm_worker_busy_seconds_total", "phase")


class BehindError(BenchError):
    """The process under test had not served the events sent by its deadline."""


class WorkerProcess:
    def __init__(self, args: list[str], log_path: Path, metrics_port: int, name: str) -> None:
        self.name = name
        self.metrics_port = metrics_port
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    def check(self) -> None:
        """Raise when the process has exited (with the end of its log)."""
        if self.proc.poll() is not None:
            raise BenchError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def is_ready(self) -> bool:
        self.check()
        try:
            return self._get("/readyz")[0] == 200
        except OSError:  # the endpoint is not up yet
            return False

    def wait_ready(self, timeout: float) -> Reading:
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if time.monotonic() > deadline:
                raise BenchError(f"worker {self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)
        return self.read()

    def read(self) -> Reading:
        self.check()
        status, text = self._get("/metrics")
        if status != 200:
            raise BenchError(f"worker {self.name}: /metrics answered {status}")
        return Reading(time.monotonic(), parse_metrics(text), cpu_seconds(self.pid), rss_bytes(self.pid))

    def wait_served(self, total: int, stall_s: float = 90.0, deadline_s: float | None = None) -> None:
        """Until it predicted `total` events (`wait_predicted`); BehindError `deadline_s` from now."""
        wait_predicted([self], total, stall_s, deadline_s=deadline_s)

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self, timeout: float = 90.0) -> int:
        """SIGTERM, as in production: the worker finishes its round, commits and leaves."""
        code = terminate(self.proc, timeout, f"worker {self.name}")
        self._log.close()
        return code


def terminate(proc: subprocess.Popen, timeout: float, name: str) -> int:
    """SIGTERM, then SIGKILL after `timeout` seconds; the exit code (-9: killed)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        log.warning("%s ignored SIGTERM for %.0f s: killed", name, timeout)
        return -9


class Started(Protocol):
    proc: subprocess.Popen[bytes]

    def stop(self, timeout: float = ...) -> object: ...


Process = TypeVar("Process", bound=Started)


class Processes(Generic[Process]):
    """A launcher's processes not stopped yet, stopped together: SIGTERM to each at once, then
    each waited for, so that a group's members leave it together."""

    def __init__(self) -> None:
        self.running: list[Process] = []

    def stop(self, *processes: Process) -> None:
        for process in processes:
            if process.proc.poll() is None:
                process.proc.terminate()
        for process in processes:
            process.stop()
            if process in self.running:
                self.running.remove(process)

    def stop_all(self) -> None:
        self.stop(*self.running)


class Launcher(Processes[WorkerProcess]):
    """Starts workers of the reference model against the benchmark's cluster."""

    def __init__(self, kafka: KafkaConfig, model_path: Path, log_dir: Path) -> None:
        super().__init__()
        self.kafka = kafka
        self.model_path = model_path
        self.log_dir = log_dir

    def start(self, name: str, input_topic: str, output_topic: str, group: str, *extra: str) -> WorkerProcess:
        port = free_port()
        args = [
            sys.executable,
            "-m",
            "worker",
            "run",
            "--bootstrap-servers",
            self.kafka.bootstrap_servers,
            "--model",
            str(self.model_path),
            "--input-topic",
            input_topic,
            "--output-topic",
            output_topic,
            "--group-id",
            group,
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(port),
            *[f"-X{key}={value}" for key, value in self.kafka.overrides],
            *extra,
        ]
        worker = WorkerProcess(args, self.log_dir / f"{name}.log", port, name)
        self.running.append(worker)
        log.info("started worker=%s pid=%d input=%s", name, worker.pid, input_topic)
        return worker


def wait_predicted(
    workers: list[WorkerProcess], total: int, stall_s: float = 90.0, hz: float = 1.0, deadline_s: float | None = None
) -> list[Reading]:
    """Poll the workers' metrics (at `hz`) until together they predicted `total` events; fails
    when their count has not grown for `stall_s` seconds, or with BehindError when `deadline_s`
    seconds have passed. Returns each one's last reading.
    Once a second: rendering the metrics holds the worker's GIL, so faster scrapes slow the drain."""
    best, last_growth = -1, time.monotonic()
    deadline = None if deadline_s is None else last_growth + deadline_s
    while True:
        readings = [w.read() for w in workers]
        done = sum(r.predicted for r in readings)
        if done >= total:
            return readings
        if deadline is not None and time.monotonic() > deadline:
            raise BehindError(f"{done}/{total} predictions by the deadline")
        if done > best:
            best, last_growth = done, time.monotonic()
        elif time.monotonic() - last_growth > stall_s:
            tails = "\n".join(w.log_tail()[-1000:] for w in workers)
            raise BenchError(f"stalled at {done}/{total} predictions for {stall_s:.0f} s:\n{tails}")
        time.sleep(1.0 / hz)


def wait_caught_up(workers: list[WorkerProcess], timeout: float = 15.0) -> None:
    """Until no worker has events left to consume (lag gauges, set at commit points), so that
    stopping them loses no prediction (a sum of predictions may hold duplicates)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lag = sum(
            v for w in workers for v in by_label(w.read().samples, "lstm_worker_consumer_lag", "partition").values()
        )
        if lag == 0:
            return
        time.sleep(0.2)
    log.warning("workers still lagging after %.0f s", timeout)
