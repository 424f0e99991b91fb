"""docker-compose.yml, checked without a Docker engine: the compose specification's schema
(check-jsonschema's vendored copy, offline), the worker's environment and commands against the
real CLI, topic partitions, and the wiring of Prometheus and Grafana to the files in deploy/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import COMPOSE, DEPLOY, REPO, SHUTDOWN_EXIT_MARGIN_S, check_worker_env, load_yaml


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


def test_worker_environment_names_real_options_with_valid_values(compose, monkeypatch):
    worker = compose["services"]["worker"]
    args = check_worker_env(worker["environment"], monkeypatch, worker["command"])
    assert args.command == "run"
    assert worker["healthcheck"]["test"][-1].count(f":{args.metrics_port}/readyz") == 1


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
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin a version, got {image!r}"


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
