"""Helpers of the deployment checks (tests/deploy/test_*.py, tests/integration/test_prometheus.py):
the repository's deploy files, the worker's own names for its options and metrics, the configuration
the worker would build from a deployment's environment, PromQL metric names, and promtool."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.schema_registry import SchemaRegistryClient

from worker.cli import build_parser
from worker.config import (
    ENV_PREFIX,
    KAFKA_ENV_PREFIX,
    REGISTRY_ENV_PREFIX,
    KafkaConfig,
    RegistryConfig,
    RunConfig,
    parse_kafka_overrides,
    parse_registry_overrides,
)
from worker.errors import ConfigError
from worker.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = REPO / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "lstm-worker.json"
# past --shutdown-timeout-s the watchdog notices within a fraction of a second and the process
# exits at once; a few seconds more cover a busy node
SHUTDOWN_EXIT_MARGIN_S = 5
# where the Confluent-compatible API of Apicurio Registry 2.x lives under its base URL
CCOMPAT_PATH = "/apis/ccompat/v7"
# a released version: digits, optionally a qualifier such as Apicurio's .Final; never latest
_PINNED_IMAGE = re.compile(r"[\w./-]+:v?\d+\.\d+\.\d+(?:[.-][A-Za-z]\w*)?")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def pinned(image: str) -> bool:
    """Whether an image reference names a released version (not latest, not a bare name)."""
    return _PINNED_IMAGE.fullmatch(image) is not None


def subcommand(name: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise AssertionError("lstm-worker has no subcommands")


def env_names(command: str = "run") -> set[str]:
    """Every LSTM_WORKER_* variable the subcommand reads (one per long option)."""
    return {
        ENV_PREFIX + flag[2:].upper().replace("-", "_")
        for action in subcommand(command)._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help" and action.dest != "json"
    }


def check_worker_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> argparse.Namespace:
    """`env` names only variables the worker reads, and the real CLI accepts them with `argv`:
    options of the subcommand, librdkafka settings (LSTM_WORKER_KAFKA_*) the worker does not refuse,
    and Schema Registry client settings (LSTM_WORKER_REGISTRY_*) that confluent-kafka's client knows.
    The variables stay set (monkeypatch) for `run_config`."""
    passthrough = (KAFKA_ENV_PREFIX, REGISTRY_ENV_PREFIX)
    unknown = {
        name
        for name in env
        if name.startswith(ENV_PREFIX) and not name.startswith(passthrough) and name not in env_names(argv[0])
    }
    assert not unknown, f"not options of `lstm-worker {argv[0]}`: {sorted(unknown)}"
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`lstm-worker {' '.join(argv)}` refuses this environment: {env}") from exc
    try:
        kafka_config(args)
        registry = registry_config(args)
    except ConfigError as exc:
        raise AssertionError(f"`lstm-worker {argv[0]}` refuses a pass-through setting: {exc}") from exc
    if registry.url:
        try:  # offline: the client checks its settings when built, and connects only when asked
            SchemaRegistryClient(registry.client())
        except ValueError as exc:
            raise AssertionError(f"the Schema Registry client refuses these settings: {exc}") from exc
    return args


def run_config(args: argparse.Namespace, tmp_path: Path) -> RunConfig:
    """The RunConfig `lstm-worker run` builds from `args` (parsed by `check_worker_env`, whose
    variables must still be set), up to connecting: a ConfigError is a setting the worker refuses
    at start. The model file is in the image, so an empty file stands in for it."""
    model = tmp_path / "model.keras"
    model.touch()
    return RunConfig.from_options(kafka_config(args), vars(args) | {"model": str(model)}, registry_config(args))


def kafka_config(args: argparse.Namespace) -> KafkaConfig:
    return KafkaConfig(args.bootstrap_servers, parse_kafka_overrides(args.kafka_settings, os.environ))


def registry_config(args: argparse.Namespace) -> RegistryConfig:
    return RegistryConfig(args.schema_registry_url, parse_registry_overrides(args.registry_settings, os.environ))


# -- metric names ---------------------------------------------------------------------------

_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def declared_metric_names() -> set[str]:
    """Every sample name the worker can export, from its metric declarations (fresh registry)."""
    names = set()
    for family in Metrics().registry.collect():
        names |= {family.name + s for s in _SUFFIXES.get(family.type, ("",))}
    return names


def exported_metric_names(text: str) -> set[str]:
    """Sample names of a live /metrics page: samples present, plus the series of declared families."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or"}
_NOT_METRICS |= {"unless", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, matchers, ranges, label lists and
    function calls are not metric names)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        before = s[m.start() - 1] if m.start() else " "
        if before.isdigit() or before in ".$":
            continue  # 1e3, 0.5, durations, Grafana variables
        if s[m.end() :].lstrip().startswith("(") or m.group().lower() in _NOT_METRICS:
            continue
        names.add(m.group())
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def dashboard_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    """Every PromQL query of the dashboard: panel targets and the template variables' queries."""
    exprs = [t["expr"] for p in dashboard_panels() for t in p["targets"]]
    for var in dashboard()["templating"]["list"]:
        query = var.get("definition", "")
        if match := re.fullmatch(r"label_values\((.+),\s*\w+\)", query):
            exprs.append(match.group(1))
    return exprs


# -- promtool ------------------------------------------------------------------------------


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: `make tools` installs Debian's prometheus package")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=cwd)
