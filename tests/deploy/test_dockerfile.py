"""deploy/Dockerfile, linted statically (hadolint is on no registry this project can use): the
checks that matter for this image, each shown to catch a bad Dockerfile as well as to pass ours."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from tests.deploy.support import DEPLOY, REPO, subcommand

# What the worker needs in the image; anything else copied in is weight or a leak.
NEEDED = {"pyproject.toml", "README.md", "worker", "./worker"}
SECRET_NAME = re.compile(r"(?i)(passw|secret|token|api_?key|access_?key|private_?key|credential|sasl_password)")
SECRET_FILE = re.compile(r"(?i)(^|/)(\.env|id_rsa|id_ed25519|\.netrc|\.npmrc|\.pypirc|.*\.pem|.*\.key|.*\.p12)$")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, args = pending.partition(" ")
        out.append((word.upper(), args.strip()))
        pending = ""
    return out


def exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def lint(text: str) -> list[str]:
    """Problems of a Dockerfile, as short messages (empty: clean)."""
    problems = []
    steps = instructions(text)
    for word, args in steps:
        if word == "FROM":
            image = args.split()[0]
            if not (re.search(r"@sha256:[0-9a-f]{64}$", image) or re.search(r":\d+\.\d+\.\d+[\w.-]*$", image)):
                problems.append(f"base image not pinned to a full version or digest: {image}")
        if word in {"ENV", "ARG"}:
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)(?:=|\s|$)", args):
                if SECRET_NAME.search(name):
                    problems.append(f"{word} {name}: secrets belong in the runtime environment, not the image")
        if word in {"COPY", "ADD"}:
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                if SECRET_FILE.search(source):
                    problems.append(f"{word} {source}: a secret file in the image")
                elif source not in NEEDED:
                    problems.append(f"{word} {source}: not something the worker needs")
        if word == "ADD" and re.search(r"https?://", args):
            problems.append("ADD from a URL: downloads at build time, unpinned")
        if word == "RUN" and "pip install" in args and "--no-cache-dir" not in args:
            problems.append("pip install without --no-cache-dir")
    users = [args.split(":")[0] for word, args in steps if word == "USER"]
    if not users or users[-1] in {"root", "0"}:
        problems.append("the image runs as root: end with USER <non-root uid>")
    entrypoint = [exec_form(args) for word, args in steps if word == "ENTRYPOINT"]
    if entrypoint[-1:] != [["lstm-worker"]]:
        problems.append('ENTRYPOINT must be ["lstm-worker"] (exec form: signals reach the worker)')
    cmd = [exec_form(args) for word, args in steps if word == "CMD"]
    if cmd[-1:] != [["run"]]:
        problems.append('CMD must be ["run"]')
    return problems


def test_dockerfile_passes_the_lint():
    assert lint((DEPLOY / "Dockerfile").read_text()) == []


@pytest.mark.parametrize(
    ("dockerfile", "problem"),
    [
        ('FROM python:3.11-slim\nUSER 10001\nENTRYPOINT ["lstm-worker"]\nCMD ["run"]', "not pinned"),
        ('FROM python:latest\nUSER 10001\nENTRYPOINT ["lstm-worker"]\nCMD ["run"]', "not pinned"),
        ('FROM python:3.11.11-slim\nENTRYPOINT ["lstm-worker"]\nCMD ["run"]', "runs as root"),
        ('FROM python:3.11.11-slim\nUSER worker\nUSER root\nENTRYPOINT ["lstm-worker"]\nCMD ["run"]', "root"),
        ('FROM python:3.11.11-slim\nENV KAFKA_SASL_PASSWORD=hunter2\nUSER 1\nENTRYPOINT ["lstm-worker"]', "secret"),
        ('FROM python:3.11.11-slim\nARG API_TOKEN\nUSER 1\nENTRYPOINT ["lstm-worker"]\nCMD ["run"]', "secret"),
        ('FROM python:3.11.11-slim\nCOPY .env /app/\nUSER 1\nENTRYPOINT ["lstm-worker"]\nCMD ["run"]', "secret"),
        ('FROM python:3.11.11-slim\nCOPY . /app\nUSER 1\nENTRYPOINT ["lstm-worker"]\nCMD ["run"]', "not something"),
        ('FROM python:3.11.11-slim\nADD https://x.org/m.keras /m\nUSER 1\nENTRYPOINT ["lstm-worker"]', "URL"),
        ('FROM python:3.11.11-slim\nRUN pip install .\nUSER 1\nENTRYPOINT ["lstm-worker"]\nCMD ["run"]', "cache"),
        ('FROM python:3.11.11-slim\nUSER 1\nENTRYPOINT lstm-worker\nCMD ["run"]', "exec form"),
    ],
)
def test_lint_catches(dockerfile, problem):
    assert any(problem in p for p in lint(dockerfile)), lint(dockerfile)


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, args in instructions((DEPLOY / "Dockerfile").read_text()):
        if word == "ENV":
            env |= dict(re.findall(r"(\w+)=(\S+)", args))
    return env


def test_image_defaults_match_the_worker():
    env = dockerfile_env()
    exposed = [args for word, args in instructions((DEPLOY / "Dockerfile").read_text()) if word == "EXPOSE"]
    assert exposed == [env["LSTM_WORKER_METRICS_PORT"]]
    run_options = {a.dest for a in subcommand("run")._actions}
    for name in env:
        if name.startswith("LSTM_WORKER_"):
            assert name[len("LSTM_WORKER_") :].lower() in run_options, name
    assert "make-model --out " + env["LSTM_WORKER_MODEL"] in (DEPLOY / "Dockerfile").read_text()


def test_build_context_sends_only_what_the_image_copies():
    lines = [x for x in (REPO / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*", "exclude everything, then allow what the Dockerfile copies"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    assert allowed == {p.lstrip("./") for p in NEEDED}
    assert all(Path(REPO / p).exists() for p in allowed)


def test_the_benchmark_is_not_in_the_image():
    copied = [
        source
        for word, args in instructions((DEPLOY / "Dockerfile").read_text())
        if word in {"COPY", "ADD"}
        for source in [a for a in args.split() if not a.startswith("--")][:-1]
    ]
    assert copied and not any(source.lstrip("./").split("/")[0] == "bench" for source in copied)
    assert not (REPO / "worker" / "bench").exists()  # `COPY worker` takes every file under worker/
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["packages"]["find"]["include"] == ["worker*"]  # `pip install .` installs no bench
