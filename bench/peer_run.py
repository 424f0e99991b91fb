"""The Quix Streams peer (bench/peer.py) as the benchmark runs it: its weights exported from the
reference model, its processes started with the peer venv's python (`make peer`), watched from
outside (its consumer group's assignment and committed offsets: the peer has no metrics), and
its drain of part 3's pre-loaded topic.

The peer commits every few seconds (Quix's default interval), so its progress is seen late;
its rate, like the worker's, comes from the predictions' log-append times, which it is not.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.check import Expected, ValueCheck, check_values
from bench.drain import Counted, DrainInput
from bench.kafka_io import BenchError, BenchKafka
from bench.peer_step import PeerModel, lstm_kernel
from bench.process import BehindError, Processes, terminate
from bench.scrape import cpu_seconds
from bench.stats import events_per_s
from worker.config import KafkaConfig
from worker.kafka.topics import partition_count

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
# `make peer`'s venv: quixstreams pins a confluent-kafka older than the worker's
PEER_PYTHON = ".cache/peer-venv/bin/python"
NO_PEER = "no peer venv at `--peer-python` (`make peer` creates it; `make bench` depends on it)"


def export_weights(model_path: Path, out: Path) -> Path:
    """The reference model (stacked LSTMs, a sigmoid Dense) as the peer's .npz; main venv only."""
    import keras

    from worker.model import fingerprint, load_model

    model = load_model(str(model_path))
    kernels, dense = [], None
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "LSTM":
            cell = layer.cell
            if cell.activation.__name__ != "tanh" or cell.recurrent_activation.__name__ != "sigmoid":
                raise BenchError(f"the peer steps keras' default LSTM activations only, not {layer.name!r}'s")
            kernels.append(lstm_kernel(*(keras.ops.convert_to_numpy(w) for w in cell.weights)))
        elif kind == "Dense" and layer.activation.__name__ == "sigmoid":
            dense = layer
        elif kind not in ("InputLayer", "Dropout"):
            raise BenchError(f"the peer has no form of layer {layer.name!r} ({kind})")
    if dense is None or not kernels:
        raise BenchError("the peer steps stacked LSTMs followed by a sigmoid Dense")
    weights = [keras.ops.convert_to_numpy(w) for w in dense.weights]
    PeerModel(kernels, weights[0], weights[1], fingerprint(model)).save(out)
    return out


def _committed(admin: AdminClient, group: str, topic: str, partitions: int) -> int:
    """Events the group has committed, summed over the topic's partitions (a fresh topic: offset = count)."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])
    answer = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    return sum(max(tp.offset, 0) for tp in answer.topic_partitions)


def _assigned(admin: AdminClient, group: str, topic: str) -> int:
    """Partitions of `topic` assigned to the group's members (0 while it rebalances)."""
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return sum(1 for member in description.members for tp in member.assignment.topic_partitions if tp.topic == topic)


class PeerProcess:
    def __init__(self, args: list[str], log_path: Path, admin: AdminClient, topics: tuple[str, str, int]) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self._admin = admin
        self.group, self.topic, self.partitions = topics
        env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.pid = self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            self._log.flush()
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise BenchError(f"the peer exited with {self.proc.returncode}:\n{tail}")

    def wait_ready(self, timeout: float) -> None:
        """Until the group holds every partition of the input: the peer polls them."""
        deadline = time.monotonic() + timeout
        while True:
            self.check()
            try:
                if _assigned(self._admin, self.group, self.topic) == self.partitions:
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the peer not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def wait_served(self, total: int, stall_s: float = 90.0, deadline_s: float | None = None) -> None:
        """Until the peer committed `total` events; BehindError `deadline_s` seconds from now."""
        best, grown = -1, time.monotonic()
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        while True:
            self.check()
            done = _committed(self._admin, self.group, self.topic, self.partitions)
            if done >= total:
                return
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise BehindError(f"the peer committed {done}/{total} events by its deadline")
            if done > best:
                best, grown = done, now
            elif now - grown > stall_s:
                raise BenchError(f"the peer stalled at {done}/{total} committed events for {stall_s:.0f} s")
            time.sleep(0.5)

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: Quix finishes the message, commits and leaves the group."""
        terminate(self.proc, timeout, "the peer")
        self._log.close()


class PeerLauncher(Processes[PeerProcess]):
    """Starts peers of the reference model's weights against the benchmark's cluster."""

    def __init__(self, kafka: KafkaConfig, python: str, weights: Path, workdir: Path) -> None:
        super().__init__()
        # absolute: the peer runs in the repository, for `-m bench.peer`, wherever the benchmark does
        self.python, self.weights, self.workdir = str(Path(python).absolute()), weights.absolute(), workdir.absolute()
        self.kafka = kafka
        self.admin = AdminClient(kafka.admin())

    def start(self, name: str, input_topic: str, output_topic: str, group: str) -> PeerProcess:
        """As `Launcher.start`: a peer in group `group` from `input_topic` to `output_topic`."""
        partitions = partition_count(self.admin, input_topic) or 0
        args = [
            self.python,
            "-m",
            "bench.peer",
            "--bootstrap-servers",
            self.kafka.bootstrap_servers,
            "--input-topic",
            input_topic,
            "--output-topic",
            output_topic,
            "--group-id",
            group,
            "--weights",
            str(self.weights),
            "--state-dir",
            str(self.workdir / "peer-state" / name),
        ]
        peer = PeerProcess(args, self.workdir / f"{name}.log", self.admin, (group, input_topic, partitions))
        self.running.append(peer)
        log.info("started peer=%s pid=%d input=%s", name, peer.pid, input_topic)
        return peer


@dataclass(frozen=True)
class PeerDrainResult(Counted):
    events: int
    predictions: int  # records in the output topic
    distinct: int  # events with at least one prediction
    events_per_s: float  # distinct / (last - first log-append time)
    seconds: float  # first to last prediction
    cpu_cores: float  # the peer's CPU seconds per wall second, start to all committed
    values: ValueCheck | None = None  # the sampled keys' predictions against their full histories


def peer_drain(
    bench: BenchKafka, launcher: PeerLauncher, data: DrainInput, expected: Expected | None = None
) -> PeerDrainResult:
    """A fresh peer, group and output topic drain `data` (msgpack) from the beginning; the predictions'
    values checked against `expected` when given, as the worker's drains are."""
    output = bench.create_output(bench.name("peer-drain-out"), data.partitions)
    peer = launcher.start("peer-drain", data.topic, output, bench.name("peer-drain"))
    try:
        peer.wait_served(data.events)
        cpu = peer.cpu_s() / max(time.monotonic() - peer.started, 1e-9)
    finally:
        launcher.stop(peer)
    predictions = bench.read_predictions(output, data.partitions, data.events)
    result = PeerDrainResult(
        data.events,
        predictions.count,
        predictions.distinct,
        events_per_s(predictions.distinct, predictions.first_ms, predictions.last_ms),
        (predictions.last_ms - predictions.first_ms) / 1000.0,
        cpu,
        None if expected is None else check_values(expected, predictions),
    )
    log.info("peer drained events=%d events_per_s=%.0f cpu_cores=%.2f", result.distinct, result.events_per_s, cpu)
    return result
