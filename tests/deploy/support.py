"""Helpers of the deployment checks (tests/deploy/test_*.py, tests/integration/test_prometheus.py):
the repository's deploy files, the worker's own names for its options and metrics, PromQL metric
names, and promtool."""

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

from worker.cli import build_parser
from worker.config import ENV_PREFIX, KAFKA_ENV_PREFIX
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


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


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
    """`env` names only variables the worker reads, and the real CLI accepts them with `argv`."""
    unknown = {
        name
        for name in env
        if name.startswith(ENV_PREFIX) and not name.startswith(KAFKA_ENV_PREFIX) and name not in env_names(argv[0])
    }
    assert not unknown, f"not options of `lstm-worker {argv[0]}`: {sorted(unknown)}"
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`lstm-worker {' '.join(argv)}` refuses this environment: {env}") from exc


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
