"""JSON and Avro events end to end: produced by clients that are not the worker's (kcat, confluent's
AvroSerializer against a real Schema Registry), predicted equal to the full history, hostile
values dead-lettered with their reason and original bytes while the worker goes on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from tests.integration.conftest import REPO, free_port
from tests.integration.kafka_io import produce, read_all
from worker.config import RegistryConfig
from worker.formats import event_encoder
from worker.formats.avro import EVENT_SCHEMA, framing
from worker.formats.registry import connect_registry
from worker.kafka.topics import create_topic
from worker.verify import verify

pytestmark = pytest.mark.integration

KEYS, EVENTS, PARTITIONS = 12, 8, 3


def _x(rng: np.random.Generator) -> list[float]:
    return [round(float(v), 6) for v in rng.standard_normal(4)]


def _dead_letters_match(kafka, topics, bad: list[tuple[bytes, bytes, str]]) -> None:
    dead = read_all(kafka, topics.dlq)
    assert sorted((r.key, r.value, r.headers["error"].decode()) for r in dead) == sorted(bad), [
        (r.key, r.headers["error"], r.headers["error.detail"]) for r in dead
    ]
    assert all(r.headers["error.detail"] for r in dead)


def _verify(kafka, model, topics, **formats):
    """`lstm-worker verify` of the test's topics, in the given formats."""
    return verify(
        kafka, model_path=str(model), input_topic=topics.input, output_topic=topics.output, timeout_s=30, **formats
    )


def kcat_lines(rng: np.random.Generator) -> list[str]:
    """Tab-separated key and JSON event, as a shell pipeline would send them: integers in x, some
    events with their own ts, a reset and an end among them."""
    lines = []
    for j in range(EVENTS):
        for k in range(KEYS):
            event: dict[str, object] = {"x": _x(rng)}
            if k % 3 == 0:
                event["x"] = [int(v * 3) for v in event["x"]]  # integers are numbers too
            if k % 4 == 1:
                event["ts"] = 1_700_000_000_000 + j
            if k == 2 and j == 4:
                event["reset"] = True
            if k == 5 and j == 3:
                event["end"] = True
            lines.append(f"k{k}\t{json.dumps(event)}")
    return lines


def hostile_json() -> list[tuple[bytes, bytes, str]]:
    nested = b'{"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    return [
        (b"cut-off", b'{"x": [1, 2, 3', "decode"),
        (b"not-utf8", b'\xff\xfe{"x": [1, 2, 3, 4]}', "decode"),
        (b"nan", b'{"x": [NaN, 0, 0, 0]}', "decode"),
        (b"infinity", b'{"x": [Infinity, 0, 0, 0]}', "decode"),
        (b"two-objects", b'{"x": [1, 2, 3, 4]}{"x": [1, 2, 3, 4]}', "decode"),
        (b"nested", nested, "type"),
        (b"huge", b'{"x": [1e400, 0, 0, 0]}', "non_finite"),
        (b"beyond-float32", b'{"x": [1e39, 0, 0, 0]}', "non_finite"),
        (b"huge-ts", b'{"x": [0, 0, 0, 0], "ts": 1' + b"0" * 30 + b"}", "type"),
        (b"string-x", b'{"x": "four"}', "type"),
        (b"string-reset", b'{"x": [1, 2, 3, 4], "reset": "yes"}', "type"),
        (b"array", b"[1, 2, 3, 4]", "type"),
        (b"three", b'{"x": [1, 2, 3]}', "shape"),
        (b"no-x", b'{"ts": 5}', "missing_field"),
    ]


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is installed by `make tools` (Debian's kcat)")
def test_json_events_from_kcat_are_predicted_as_the_full_history(broker, kafka, topics, model_file, start_worker):
    model = model_file("lstm", (16, 8))
    rng = np.random.default_rng(11)
    create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS)
    lines = kcat_lines(rng)
    half = len(lines) // 2
    kcat = ["kcat", "-P", "-b", broker, "-t", topics.input, "-K", "\t"]
    subprocess.run(kcat, input="\n".join(lines[:half]) + "\n", text=True, check=True, timeout=60)
    bad = hostile_json()
    spread = b'{"x":\n[0.5, 0.25, -0.5, 1]}'  # valid across two lines: the poll's per-value path takes it
    produce(kafka, topics.input, [(key, value) for key, value, _ in bad] + [(b"k0", spread)])
    subprocess.run(kcat, input="\n".join(lines[half:]) + "\n", text=True, check=True, timeout=60)

    worker = start_worker(model, topics, "--input-format", "json")
    worker.wait_ready()
    report = _verify(kafka, model, topics, input_format="json")
    good = len(lines) + 1
    assert report.ok and report.events == good and report.predictions == good, report.summary()
    assert report.invalid_events == len(bad) and report.duplicates == 0
    _dead_letters_match(kafka, topics, bad)
    prediction = json.loads(read_all(kafka, topics.output)[0].value)
    assert sorted(prediction) == ["model", "src", "step", "ts", "y"]
    assert len(prediction["y"]) == 1 and len(prediction["src"]) == 2 and prediction["step"] >= 1
    assert worker.proc.poll() is None and worker.stop() == 0


def _registered(client, subject: str, schema: dict) -> int:
    return int(client.register_schema(subject, Schema(json.dumps(schema), "AVRO")))


def test_avro_events_of_any_resolving_writer_schema_are_predicted_as_the_full_history(
    kafka, topics, model_file, start_worker, registry_url
):
    """Events from confluent's AvroSerializer with the reader schema and with an evolved writer
    schema (integer x, ts not nullable, no flags, an extra field) are all predicted; predictions
    are Avro under `<output>-value`, read back by confluent's AvroDeserializer (verify)."""
    model = model_file("lstm", (16, 8))
    client = connect_registry(RegistryConfig(registry_url))
    rng = np.random.default_rng(12)
    encode = event_encoder("avro", topics.input, client)
    evolved = {
        "type": "record",
        "name": "Event",
        "namespace": "lstm_worker",
        "fields": [
            {"name": "x", "type": {"type": "array", "items": "int"}},
            {"name": "ts", "type": "long"},
            {"name": "source", "type": "string"},
        ],
    }
    context = SerializationContext(topics.input, MessageField.VALUE)
    serialize_evolved = AvroSerializer(client, json.dumps(evolved))
    good = []
    for j in range(EVENTS):
        for k in range(KEYS):
            if k % 4 == 3:
                event = {"x": [int(v * 3) for v in _x(rng)], "ts": 1_700_000_000_000 + j, "source": "sensor"}
                good.append((f"k{k}".encode(), serialize_evolved(event, context)))
            else:
                x = np.array(_x(rng), dtype=np.float32)
                good.append((f"k{k}".encode(), encode(x, None, k == 2 and j == 4, k == 5 and j == 3)))
    valid = encode(np.ones(4, dtype=np.float32), None, False, False)
    unresolvable = dict(EVENT_SCHEMA, fields=[{"name": "x", "type": "string"}])
    other_id = _registered(client, f"{topics.input}-unrelated-value", unresolvable)
    nan = encode(np.array([np.nan, 0, 0, 0], dtype=np.float32), None, False, False)
    bad = [
        (b"magic", b"\x01" + valid[1:], "framing"),
        (b"short", b"\x00\x00\x01", "framing"),
        (b"unknown-id", framing(987_654) + valid[5:], "schema"),
        (b"unresolvable", framing(other_id) + b"\x06abc", "schema"),
        (b"truncated", valid[:-6], "decode"),
        (b"trailing", valid + b"\x00\x00", "decode"),
        (b"three", encode(np.ones(3, dtype=np.float32), None, False, False), "shape"),
        (b"nan", nan, "non_finite"),
        (b"json", b'{"x": [1, 2, 3, 4]}', "framing"),
    ]
    create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS)
    records = list(good)
    for i, (key, value, _) in enumerate(bad):
        records.insert(1 + i * (len(good) // len(bad)), (key, value))
    produce(kafka, topics.input, records)

    worker = start_worker(model, topics, "--input-format", "avro", "--schema-registry-url", registry_url)
    worker.wait_ready()
    report = _verify(kafka, model, topics, input_format="avro", registry=client)
    assert report.ok and report.events == len(good) and report.predictions == len(good), report.summary()
    assert report.invalid_events == len(bad) and report.duplicates == 0
    _dead_letters_match(kafka, topics, bad)
    latest = client.get_latest_version(f"{topics.output}-value")
    assert json.loads(latest.schema.schema_str)["name"] == "Prediction"
    assert {r.value[:5] for r in read_all(kafka, topics.output)} == {framing(latest.schema_id)}
    assert worker.proc.poll() is None and worker.stop() == 0


def test_a_registry_that_cannot_be_reached_stops_the_worker_at_start(topics, model_file, start_worker, kafka):
    create_topic(AdminClient(kafka.admin()), topics.input, 1)
    nowhere = f"http://127.0.0.1:{free_port()}/apis/ccompat/v7"
    worker = start_worker(
        model_file("lstm", (16, 8)), topics, "--input-format", "avro", "--schema-registry-url", nowhere
    )
    assert worker.proc.wait(60) == 2
    log = worker.log()
    assert f"the schema registry at {nowhere} cannot be reached" in log and "check --schema-registry-url" in log, log
    assert "Traceback" not in log


def test_a_registry_that_refuses_the_credentials_stops_the_worker_at_start(
    tmp_path, topics, model_file, start_worker, kafka
):
    """Apicurio with authentication on (its OIDC server need not run for it to refuse a client
    that brings no credentials)."""
    create_topic(AdminClient(kafka.admin()), topics.input, 1)
    env = {
        **os.environ,
        "REGISTRY_PORT": str(free_port()),
        "REGISTRY_DIR": str(tmp_path / "registry"),
        "AUTH_ENABLED": "true",
        "KEYCLOAK_URL": f"http://127.0.0.1:{free_port()}",
        "KEYCLOAK_REALM": "none",
    }
    started = subprocess.run([REPO / "deploy/registry/start.sh"], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    try:
        url = started.stdout.strip()
        worker = start_worker(
            model_file("lstm", (16, 8)), topics, "--output-format", "avro", "--schema-registry-url", url
        )
        assert worker.proc.wait(60) == 2
        log = worker.log()
        assert f"the schema registry at {url} refused the credentials (HTTP 401)" in log, log
        assert "check -S basic.auth.user.info" in log and "Traceback" not in log, log
    finally:
        subprocess.run([REPO / "deploy/registry/stop.sh"], env=env, capture_output=True, timeout=60)
