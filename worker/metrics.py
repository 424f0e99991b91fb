"""Every Prometheus metric of the worker, declared once against a replaceable registry,
and the HTTP endpoint that serves /metrics, /healthz and /readyz.

No metric carries an entity key as a label: cardinality stays bounded by partitions.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from worker.errors import ConfigError
from worker.options import RUN

log = logging.getLogger(__name__)

_POWERS_OF_TWO = tuple(float(2**i) for i in range(0, 14))
PHASES = ("poll", "decode", "state", "step", "produce", "commit", "restore")
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BulkHistogram(Collector):
    """A histogram fed a whole round of observations in one NumPy call.

    prometheus_client's Histogram takes one value per call, too costly per event
    (docs/performance.md, "Metrics on the hot path"). Exposed exactly like a Histogram.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = np.array(buckets, dtype=np.float64)
        self._counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Bucket `le` holds values <= its bound, as Prometheus defines it."""
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._counts))
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> list[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        bounds = [*(floatToGoString(b) for b in self._bounds), "+Inf"]
        family = HistogramMetricFamily(self._name, self._documentation)
        family.add_metric([], list(zip(bounds, (float(c) for c in cumulative), strict=True)), total)
        return [family]


class Metrics:
    """The worker's metrics; tests pass a fresh registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, p = self.registry, "lstm_worker_"
        self.events = Counter(
            p + "events",
            "Input events by result (predicted, skipped: already in the state, dead_letter)",
            ["result"],
            registry=r,
        )
        self.predictions = Counter(p + "predictions", "Predictions published", registry=r)
        self.dead_letters = Counter(
            p + "dead_letters", "Records sent to the dead-letter topic, by reason", ["reason"], registry=r
        )
        self.round_keys = Histogram(p + "round_keys", "Keys per model round", buckets=_POWERS_OF_TWO, registry=r)
        self.round_steps = Histogram(
            p + "round_steps", "Time steps per model round (longest key slice)", buckets=_POWERS_OF_TWO, registry=r
        )
        self.step_seconds = Histogram(
            p + "step_seconds", "Seconds per batched model step", buckets=_SECONDS, registry=r
        )
        self.latency = BulkHistogram(
            p + "latency_seconds", "End-to-end latency, event ts to prediction produced", _SECONDS, r
        )
        self.cache_lookups = Counter(
            p + "cache_lookups",
            "State lookups by result (hit, miss: read from the state topic, new)",
            ["result"],
            registry=r,
        )
        for result in ("hit", "miss", "new"):  # every series from the start, at 0: a round of hits counts only hits
            self.cache_lookups.labels(result)
        self.cache_keys = Gauge(p + "cache_keys", "Keys resident in the state cache", registry=r)
        self.cache_bytes = Gauge(p + "cache_bytes", "Bytes of state resident in the state cache", registry=r)
        self.model_mismatch = Counter(
            p + "model_mismatch", "States of another model fingerprint, reset to zero", registry=r
        )
        self.state_writes = Counter(
            p + "state_writes", "State records written to the state topic (tombstone: deletions)", ["kind"], registry=r
        )
        self.expired_keys = Counter(
            p + "expired_keys", "Keys idle for longer than --state-ttl, tombstoned and dropped", registry=r
        )
        self.restore_records = Counter(
            p + "restore_records", "State records read while restoring partitions", registry=r
        )
        self.stale_state_records = Counter(
            p + "stale_state_records",
            "State records ignored at restore: older (lower src offset) than one read for their key, "
            "written late by a member that had lost the partition",
            registry=r,
        )
        self.restoring_partitions = Gauge(
            p + "restoring_partitions", "Assigned partitions whose state is being restored (paused)", registry=r
        )
        self.restore_seconds = Histogram(
            p + "restore_seconds", "Seconds to restore newly assigned partitions", buckets=_SECONDS, registry=r
        )
        self.commit_failures = Counter(
            p + "commit_failures", "Offset commits that failed (redone at the next commit point)", registry=r
        )
        self.transaction_aborts = Counter(
            p + "transaction_aborts",
            "Aborted transactions (exactly_once_v2); their partitions are restored",
            registry=r,
        )
        self.commit_seconds = Histogram(
            p + "commit_seconds", "Seconds per commit point (flush, states, offsets)", buckets=_SECONDS, registry=r
        )
        self.consumer_lag = Gauge(
            p + "consumer_lag", "Events not yet consumed, per input partition", ["partition"], registry=r
        )
        self.assigned_partitions = Gauge(
            p + "assigned_partitions", "Input partitions assigned to this worker", registry=r
        )
        self.busy_seconds = Counter(
            p + "busy_seconds",
            "Seconds of the worker loop by phase (poll, decode, state, step, produce, commit, restore)",
            ["phase"],
            registry=r,
        )
        self.busy = {phase: self.busy_seconds.labels(phase) for phase in PHASES}
        self.ready = Gauge(
            p + "ready", "1 when /readyz answers 200 (joined the group, assigned partitions restored)", registry=r
        )


class PhaseClock:
    """Splits the loop's wall time into phases: each `lap` charges the time since the last one."""

    def __init__(self, metrics: Metrics) -> None:
        self._busy = metrics.busy
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self._busy[phase].inc(now - self._last)
        self._last = now


class HealthServer:
    """/metrics, /healthz (the process is alive) and /readyz (assigned partitions restored)."""

    def __init__(self, metrics: Metrics, ready: Callable[[], bool], host: str, port: int) -> None:
        registry = metrics.registry
        metrics.ready.set_function(lambda: 1.0 if ready() else 0.0)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b"ok\n")
                elif path == "/readyz":
                    ok = ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"restoring or not assigned\n")
                else:
                    self._reply(404, b"not found: try /metrics, /healthz, /readyz\n")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            # another worker on the host has the default port: a setting to change, not a crash
            flag = RUN["metrics_port"]
            raise ConfigError(
                f"port {port} is in use on {host}: set {flag.flag} / {flag.env}, 0 turns the endpoint off"
            ) from exc
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics endpoint listening port=%d", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
