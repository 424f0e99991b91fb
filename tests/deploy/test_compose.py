"""docker-compose.yml, checked without a Docker engine: the compose specification's schema
(check-jsonschema's vendored copy, offline), the worker's environment and commands against the
real CLI and the configuration it builds, topic partitions, the wiring of the workers and the
producer to the Schema Registry, and of Prometheus and Grafana to the files in deploy/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.support import (
    CCOMPAT_PATH,
    COMPOSE,
    DEPLOY,
    REPO,
    SHUTDOWN_EXIT_MARGIN_S,
    check_worker_env,
    load_yaml,
    pinned,
    run_config,
)
from worker.errors import ConfigError
from worker.options import Format

REGISTRY_URL = "LSTM_WORKER_SCHEMA_REGISTRY_URL"


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)  # type: ignore[no-any-return]


def test_compose_file_validates_against_the_compose_specification():
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_compose_file(tmp_path, compose):
    broken = yaml.safe_load(yaml.safe_dump(compose))
    broken["services"]["worker"]["deploy"]["replicas"] = "three"
    broken["services"]["worker"]["enviroment"] = {"X": "1"}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = check_compose_schema(path)
    assert result.returncode != 0
    assert "enviroment" in result.stdout + result.stderr


def test_the_workers_shutdown_bound_ends_before_composes_sigkill(compose, monkeypatch):
    worker = compose["services"]["worker"]
    timeout_s = check_worker_env(worker["environment"], monkeypatch, worker["command"]).shutdown_timeout_s
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace, f"stop_grace_period {worker['stop_grace_period']!r}: expected seconds, e.g. 60s"
    assert int(grace.group(1)) >= timeout_s + SHUTDOWN_EXIT_MARGIN_S


def test_worker_environment_names_real_options_with_valid_values(compose, monkeypatch, tmp_path):
    worker = compose["services"]["worker"]
    args = check_worker_env(worker["environment"], monkeypatch, worker["command"])
    assert args.command == "run"
    assert worker["healthcheck"]["test"][-1].count(f":{args.metrics_port}/readyz") == 1
    config = run_config(args, tmp_path)
    assert config.input_format == formats(compose)["producer"], "the worker reads what the producer sends"
    assert config.registry.url == worker["environment"][REGISTRY_URL]


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("LSTM_WORKER_SCHEMA_REGISTRY_ULR", "http://registry:8080", "not options"),
        ("LSTM_WORKER_INPUT_FORMAT", "protobuf", "refuses this environment"),
        ("LSTM_WORKER_REGISTRY_BASIC_AUTH_USR_INFO", "user:password", "client refuses"),
        ("LSTM_WORKER_REGISTRY_BASIC_AUTH_USER_INFO", "no-colon", "client refuses"),
        ("LSTM_WORKER_REGISTRY_URL", "http://elsewhere:8081", "refuses a pass-through"),
        ("LSTM_WORKER_KAFKA_GROUP_ID", "other", "refuses a pass-through"),
    ],
)
def test_the_environment_check_refuses_what_the_worker_refuses(compose, monkeypatch, name, value, why):
    worker = compose["services"]["worker"]
    with pytest.raises(AssertionError, match=why):
        check_worker_env(worker["environment"] | {name: value}, monkeypatch, worker["command"])


def test_producer_command_is_accepted_by_the_cli(compose, monkeypatch):
    producer = compose["services"]["producer"]
    args = check_worker_env(producer["environment"], monkeypatch, producer["command"])
    worker = compose["services"]["worker"]["environment"]
    assert args.command == "produce"
    assert args.topic == worker["LSTM_WORKER_INPUT_TOPIC"]
    assert args.bootstrap_servers == worker["LSTM_WORKER_BOOTSTRAP_SERVERS"]


def created_topics(compose: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """topic -> (partitions, rest of the line) from the topic-setup service's script."""
    setup = compose["services"]["topics"]
    partitions_var = str(setup["environment"]["PARTITIONS"])
    topics = {}
    for line in "\n".join(setup["command"]).splitlines():
        if match := re.search(r'\$\$create --topic (\S+) --partitions ("\$\$PARTITIONS"|\d+)(.*)', line):
            count = partitions_var if "PARTITIONS" in match.group(2) else match.group(2)
            topics[match.group(1)] = (int(count), match.group(3))
    return topics


def test_every_topic_is_created_with_the_same_partitions_and_the_state_compacted(compose):
    env = compose["services"]["worker"]["environment"]
    topics = created_topics(compose)
    names = [env[f"LSTM_WORKER_{k}_TOPIC"] for k in ("INPUT", "STATE", "OUTPUT", "DLQ")]
    assert sorted(topics) == sorted(names), "the setup creates exactly the worker's four topics"
    assert len({partitions for partitions, _ in topics.values()}) == 1, f"co-partitioned: {topics}"
    assert "cleanup.policy=compact" in topics[env["LSTM_WORKER_STATE_TOPIC"]][1]


def test_replicas_and_producer_agree_with_the_partition_count(compose):
    partitions = next(iter(created_topics(compose).values()))[0]
    assert 1 <= compose["services"]["worker"]["deploy"]["replicas"] <= partitions
    command = compose["services"]["producer"]["command"]
    assert int(command[command.index("--partitions") + 1]) == partitions


def test_kafka_listener_is_the_one_the_workers_use(compose):
    kafka = compose["services"]["kafka"]["environment"]
    bootstrap = compose["services"]["worker"]["environment"]["LSTM_WORKER_BOOTSTRAP_SERVERS"]
    assert f"PLAINTEXT://{bootstrap}" in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:4.")


def test_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert pinned(image), f"{name}: pin a version, got {image!r}"
    assert compose["services"]["registry"]["image"].startswith("apicurio/apicurio-registry-mem:2.")
    for loose in ("apicurio/apicurio-registry-mem:latest", "apicurio/apicurio-registry-mem", "prom/prometheus:v2"):
        assert not pinned(loose)


def test_published_ports_are_bound_to_loopback_only(compose):
    published = {name: s["ports"] for name, s in compose["services"].items() if "ports" in s}
    assert "registry" in published, "verify and produce from the host need the registry"
    for name, ports in published.items():
        assert all(p.startswith("127.0.0.1:") for p in ports), f"{name} is reachable from other hosts: {ports}"


def container_port(service: dict[str, Any]) -> int:
    (mapping,) = service["ports"]
    return int(mapping.rsplit(":", 1)[1])


def registry_services(compose: dict[str, Any]) -> dict[str, str]:
    """service -> its Schema Registry URL, for every service that has one."""
    return {
        n: s["environment"][REGISTRY_URL]
        for n, s in compose["services"].items()
        if REGISTRY_URL in s.get("environment", {})
    }


def test_registry_url_is_the_registry_services_confluent_api(compose):
    registry = compose["services"]["registry"]
    assert sorted(registry_services(compose)) == ["producer", "worker"]
    health = registry["healthcheck"]["test"][-1]
    probed = re.search(r"/dev/tcp/127\.0\.0\.1/(\d+) .*GET /health/ready ", health)
    assert probed, f"the healthcheck must ask the registry's readiness endpoint: {health}"
    for name, url in registry_services(compose).items():
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname) == ("http", "registry"), f"{name}: {url}"
        assert parts.port == container_port(registry) == int(probed.group(1)), f"{name}: {url}"
        assert parts.path == CCOMPAT_PATH, f"{name}: the Confluent API's base URL, got {url}"


def test_every_service_with_a_registry_waits_until_it_is_healthy(compose):
    """The worker checks the registry at start whenever it has a URL (exit 2 if it does not
    answer) and the producer registers the event schema first: both must wait for readiness."""
    for name in registry_services(compose):
        assert compose["services"][name]["depends_on"]["registry"] == {"condition": "service_healthy"}, name
    assert "registry" not in compose["services"]["registry"].get("depends_on", {})


def formats(compose: dict[str, Any]) -> dict[str, str]:
    worker = compose["services"]["worker"]["environment"]
    return {
        "worker input": worker["LSTM_WORKER_INPUT_FORMAT"],
        "worker output": worker["LSTM_WORKER_OUTPUT_FORMAT"],
        "producer": compose["services"]["producer"]["environment"]["LSTM_WORKER_FORMAT"],
    }


def test_producer_and_workers_agree_on_one_format(compose):
    """A worker reading another format than the producer sends dead-letters every event; all
    three values come from the one x-format anchor, so switching is a one-line change."""
    (anchored,) = re.findall(r"^x-format: &format (\w+)$", COMPOSE.read_text(), re.MULTILINE)
    assert set(formats(compose).values()) == {anchored}, formats(compose)
    assert anchored == "msgpack", "the demo's default stays msgpack"
    assert COMPOSE.read_text().count("*format") == len(formats(compose))


@pytest.mark.parametrize("fmt", get_args(Format))
def test_every_format_the_anchor_may_take_starts_the_worker_and_the_producer(compose, monkeypatch, tmp_path, fmt):
    worker, producer = compose["services"]["worker"], compose["services"]["producer"]
    env = worker["environment"] | {"LSTM_WORKER_INPUT_FORMAT": fmt, "LSTM_WORKER_OUTPUT_FORMAT": fmt}
    config = run_config(check_worker_env(env, monkeypatch, worker["command"]), tmp_path)
    assert (config.input_format, config.prediction_format) == (fmt, fmt)
    args = check_worker_env(producer["environment"] | {"LSTM_WORKER_FORMAT": fmt}, monkeypatch, producer["command"])
    assert args.format == fmt and args.schema_registry_url == config.registry.url


def test_avro_without_the_registry_url_is_refused(compose, monkeypatch, tmp_path):
    """The check above can fail: the worker's own validation refuses avro with no registry."""
    worker = compose["services"]["worker"]
    env = {k: v for k, v in worker["environment"].items() if k != REGISTRY_URL}
    args = check_worker_env(env | {"LSTM_WORKER_OUTPUT_FORMAT": "avro"}, monkeypatch, worker["command"])
    with pytest.raises(ConfigError, match="Schema Registry"):
        run_config(args, tmp_path)


def host_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts of a service: container path -> host path (resolved from the repository root)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = str(REPO / source)
    return mounts


def test_prometheus_scrapes_every_worker_replica_and_loads_the_alerts(compose):
    prometheus = compose["services"]["prometheus"]
    mounts = host_mounts(prometheus)
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    container_path = config_flag.split("=", 1)[1]
    directory = next(t for t in mounts if container_path.startswith(t + "/"))
    config_path = Path(mounts[directory]) / container_path[len(directory) + 1 :]
    assert config_path == DEPLOY / "prometheus" / "prometheus.yml"
    config = load_yaml(config_path)
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "lstm-worker")
    port = int(compose["services"]["worker"]["environment"]["LSTM_WORKER_METRICS_PORT"])
    # Docker's DNS answers a scaled service's name with every replica's address
    assert job["dns_sd_configs"] == [{"names": ["worker"], "type": "A", "port": port, "refresh_interval": "15s"}]
    for rule_file in config["rule_files"]:
        assert (config_path.parent / rule_file).is_file()


def test_grafana_is_provisioned_with_the_datasource_and_dashboard(compose):
    mounts = host_mounts(compose["services"]["grafana"])
    provisioning = Path(mounts["/etc/grafana/provisioning"])
    datasource = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    provider = load_yaml(provisioning / "dashboards" / "lstm-worker.yml")["providers"][0]
    dashboards = Path(mounts[provider["options"]["path"]])
    assert (dashboards / "lstm-worker.json").is_file()
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == provider["options"]["path"] + "/lstm-worker.json"
