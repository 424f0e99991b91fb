"""Kafka security by configuration only (issue 6), on a broker of this module's own that serves
clients SASL_PLAINTEXT and SASL_SSL (PLAIN and SCRAM-SHA-512) with ACLs on (KRaft's
StandardAuthorizer):

- a worker given the right credentials (PLAIN by -X flags; SCRAM-SHA-512 over TLS by environment
  variables) and exactly the README's ACLs predicts every event;
- wrong credentials stop it at start (exit 2) within seconds, with a SASL authentication error;
  so does a broker certificate it cannot verify, with a TLS error;
- a missing ACL (WRITE on the state topic, READ on the group, WRITE on the transactional id)
  stops it at start, naming it;
- no password shows in its output (at DEBUG level too), error messages or /metrics.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from tests.integration.conftest import REPO, LocalBroker, Topics, WorkerProcess, free_port
from tests.integration.kafka_io import produce, read_all
from worker.codec import encode_event
from worker.config import KafkaConfig
from worker.kafka.topics import create_topic

pytestmark = pytest.mark.integration

# fresh per run, so that finding one in an output can only mean a leak
PASSWORDS = {user: f"{user}-pw-{uuid.uuid4().hex[:12]}" for user in ("admin", "alice", "bob", "carol", "dave", "erin")}
PARTITIONS, KEYS, EVENTS_PER_KEY = 2, 6, 3
EOS = ("--processing-guarantee", "exactly_once_v2")


@dataclass(frozen=True)
class SaslBroker:
    bootstrap: str  # SASL_PLAINTEXT
    tls_bootstrap: str  # SASL_SSL, with a self-signed certificate
    ca: Path  # that certificate, for ssl.ca.location

    def settings(self, user: str, mechanism: str = "PLAIN", password: str | None = None) -> dict[str, str]:
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": mechanism,
            "sasl.username": user,
            "sasl.password": PASSWORDS[user] if password is None else password,
        }

    def kafka(self, user: str = "admin", mechanism: str = "PLAIN") -> KafkaConfig:
        return KafkaConfig(self.bootstrap, tuple(sorted(self.settings(user, mechanism).items())))


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    users = " ".join(f"{user}:{pw}" for user, pw in PASSWORDS.items() if user != "admin")
    data, tls_port = tmp_path_factory.mktemp("kafka-sasl"), free_port()
    local = LocalBroker(
        data,
        KAFKA_SECURITY="sasl",
        KAFKA_SSL_PORT=str(tls_port),
        KAFKA_SASL_ADMIN_PASSWORD=PASSWORDS["admin"],
        KAFKA_SASL_USERS=users,
    )
    local.start()
    try:
        yield SaslBroker(local.bootstrap, f"127.0.0.1:{tls_port}", data / "tls" / "ca.pem")
    finally:
        local.stop()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()


def worker_acls(user: str, topics: Topics, group: str, eos: bool = False) -> list[AclBinding]:
    """README's list (section Security), for one worker principal."""

    def allow(kind: ResourceType, name: str, op: AclOperation, pattern=ResourcePatternType.LITERAL) -> AclBinding:
        return AclBinding(kind, name, pattern, f"User:{user}", "*", op, AclPermissionType.ALLOW)

    topic, group_kind = ResourceType.TOPIC, ResourceType.GROUP
    acls = [
        allow(topic, topics.input, AclOperation.READ),
        allow(topic, topics.output, AclOperation.WRITE),
        allow(topic, topics.dlq, AclOperation.WRITE),
        allow(topic, topics.state, AclOperation.READ),
        allow(topic, topics.state, AclOperation.WRITE),
        allow(topic, topics.state, AclOperation.DESCRIBE_CONFIGS),
        *(allow(topic, t, AclOperation.CREATE) for t in (topics.output, topics.dlq, topics.state)),
        allow(group_kind, group, AclOperation.READ),
        allow(group_kind, group + ".state-reader", AclOperation.DESCRIBE),
    ]
    if eos:
        acls.append(allow(ResourceType.TRANSACTIONAL_ID, group + ".", AclOperation.WRITE, ResourcePatternType.PREFIXED))
    return acls


def grant(broker: SaslBroker, acls: list[AclBinding]) -> None:
    admin = AdminClient(broker.kafka().admin())
    for future in admin.create_acls(acls).values():
        future.result(timeout=30)


def make_input(broker: SaslBroker, topics: Topics) -> list[tuple[int, int]]:
    """The input topic with KEYS x EVENTS_PER_KEY events, produced as the admin over SASL; their positions."""
    kafka = broker.kafka()
    create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS)
    rng = np.random.default_rng(0)
    events = [(f"k{k}".encode(), encode_event(rng.standard_normal(4).astype(np.float32))) for k in range(KEYS)]
    produce(kafka, topics.input, events * EVENTS_PER_KEY)
    return sorted((r.partition, r.offset) for r in read_all(kafka, topics.input))


def wait_for_predictions(broker: SaslBroker, topics: Topics, count: int, worker: WorkerProcess) -> list[list[int]]:
    deadline = time.monotonic() + 60
    while True:
        records = read_all(broker.kafka(), topics.output)
        if len(records) >= count or time.monotonic() > deadline:
            return sorted(msgpack.unpackb(r.value)["src"] for r in records)
        assert worker.proc.poll() is None, worker.log()
        time.sleep(0.5)


def predict_all_and_stop(
    broker: SaslBroker, topics: Topics, positions: list[tuple[int, int]], worker: WorkerProcess
) -> str:
    """Every input event predicted (its src in order), a clean stop; the /metrics text meanwhile."""
    worker.wait_ready()
    srcs = wait_for_predictions(broker, topics, len(positions), worker)
    assert srcs == [list(p) for p in positions], worker.log()
    metrics = worker.get("/metrics")[1]
    assert worker.stop() == 0, worker.log()
    return metrics


def start(bootstrap: str, model: Path, topics: Topics, log: Path, *extra: str) -> WorkerProcess:
    return WorkerProcess(bootstrap, model, topics, log, "--group-id", group_of(topics), *extra)


def group_of(topics: Topics) -> str:
    return f"group-{topics.input}"


def x_flags(settings: dict[str, str]) -> list[str]:
    return [arg for key, value in settings.items() for arg in ("-X", f"{key}={value}")]


def assert_no_password(*texts: str) -> None:
    for text in texts:
        for user, password in PASSWORDS.items():
            assert password not in text, f"{user}'s password leaked:\n{text[-3000:]}"


def run_to_exit(bootstrap: str, model: Path, topics: Topics, *extra: str) -> tuple[int, str, str, float]:
    """`lstm-worker run` expected to stop at start: exit code, stdout, stderr, seconds."""
    args = [sys.executable, "-m", "worker", "run", "--bootstrap-servers", bootstrap, "--model", str(model)]
    args += ["--input-topic", topics.input, "--output-topic", topics.output, "--group-id", group_of(topics)]
    args += ["--metrics-port", "0", "--log-level", "DEBUG", *extra]
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)
    return done.returncode, done.stdout, done.stderr, time.monotonic() - started


def test_plain_credentials_by_flags_process_events_and_leak_no_password(
    sasl_broker, topics, model_file, tmp_path, workers
):
    grant(sasl_broker, worker_acls("alice", topics, group_of(topics)))
    positions = make_input(sasl_broker, topics)
    flags = x_flags({**sasl_broker.settings("alice", "PLAIN"), "debug": "conf,security"})  # librdkafka's too
    worker = start(sasl_broker.bootstrap, model_file(), topics, tmp_path / "alice.log", "--log-level", "DEBUG", *flags)
    workers.append(worker)
    metrics = predict_all_and_stop(sasl_broker, topics, positions, worker)
    log = worker.log_path.read_text()
    assert "configuration: RunConfig(" in log and "'sasl.password': '***'" in log, log[-3000:]
    assert "'sasl.username': 'alice'" in log
    assert_no_password(log, metrics)


def test_scram_credentials_by_environment_over_tls_process_events_exactly_once(
    sasl_broker, topics, model_file, tmp_path, workers, monkeypatch
):
    grant(sasl_broker, worker_acls("bob", topics, group_of(topics), eos=True))
    positions = make_input(sasl_broker, topics)
    settings = {
        **sasl_broker.settings("bob", "SCRAM-SHA-512"),
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(sasl_broker.ca),
    }
    for key, value in settings.items():
        monkeypatch.setenv("LSTM_WORKER_KAFKA_" + key.upper().replace(".", "_"), value)
    worker = start(sasl_broker.tls_bootstrap, model_file(), topics, tmp_path / "bob.log", *EOS)
    workers.append(worker)
    metrics = predict_all_and_stop(sasl_broker, topics, positions, worker)
    assert_no_password(worker.log_path.read_text(), metrics)


@pytest.mark.parametrize(
    ("user", "mechanism", "password"),
    [("alice", "PLAIN", "wrong-pw-1a2b3c"), ("bob", "SCRAM-SHA-512", "wrong-pw-4d5e6f"), ("nobody", "PLAIN", "pw")],
    ids=["plain-wrong-password", "scram-wrong-password", "unknown-user"],
)
def test_wrong_credentials_stop_the_worker_at_start(sasl_broker, topics, model_file, user, mechanism, password):
    settings = {**sasl_broker.settings("alice", mechanism, password), "sasl.username": user}
    code, out, err, seconds = run_to_exit(sasl_broker.bootstrap, model_file(), topics, *x_flags(settings))
    assert code == 2, out + err
    assert seconds < 30, f"took {seconds:.1f} s"
    assert "SASL authentication failed" in err and f"sasl.username={user!r}" in err, err
    assert "sasl.password" in err and f"sasl.mechanism={mechanism}" in err, err  # what to check
    assert password not in out + err
    assert_no_password(out, err)


@pytest.mark.parametrize(
    ("user", "lacking", "extra", "expected"),
    [
        ("carol", (ResourceType.TOPIC, "state", AclOperation.WRITE), (), "not authorized to WRITE topic {state!r}"),
        (
            "dave",
            (ResourceType.GROUP, "group", AclOperation.READ),
            (),
            "not authorized to READ consumer group {group!r}",
        ),
        (
            "erin",
            (ResourceType.TRANSACTIONAL_ID, "txn", AclOperation.WRITE),
            EOS,
            "not authorized to WRITE transactional id {group}.* (--processing-guarantee exactly_once_v2)",
        ),
    ],
    ids=["state-topic-write", "group-read", "transactional-id-write"],
)
def test_a_missing_acl_stops_the_worker_at_start(sasl_broker, topics, model_file, user, lacking, extra, expected):
    names = {"state": topics.state, "group": group_of(topics), "txn": group_of(topics) + "."}
    kind, name, operation = lacking
    acls = worker_acls(user, topics, group_of(topics), eos=bool(extra))
    kept = [a for a in acls if (a.restype, a.name, a.operation) != (kind, names[name], operation)]
    assert len(kept) == len(acls) - 1
    grant(sasl_broker, kept)
    make_input(sasl_broker, topics)
    flags = x_flags(sasl_broker.settings(user))
    code, out, err, _ = run_to_exit(sasl_broker.bootstrap, model_file(), topics, *flags, *extra)
    assert code == 2, out + err  # at start: TensorFlow loads first (seconds), so no tight time bound
    assert expected.format(**names) in err, err
    assert "the ACLs the worker needs are listed in docs/security.md" in err, err
    assert_no_password(out, err)


def test_a_broker_certificate_the_worker_cannot_verify_stops_it_at_start(sasl_broker, topics, model_file):
    """No ssl.ca.location: the system's CAs did not sign the broker's certificate."""
    settings = {**sasl_broker.settings("alice"), "security.protocol": "SASL_SSL"}
    code, out, err, seconds = run_to_exit(sasl_broker.tls_bootstrap, model_file(), topics, *x_flags(settings))
    assert code == 2, out + err
    assert seconds < 30, f"took {seconds:.1f} s"
    assert "TLS handshake with" in err and "certificate verify failed" in err and "ssl.ca.location" in err, err
    assert_no_password(out, err)
