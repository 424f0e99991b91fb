"""The benchmark beside the worker, not in it: the worker imports nothing of `bench`, and
`lstm-worker` has no benchmark subcommand; `python -m bench` takes every option of a run."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from bench.__main__ import build_parser
from bench.run import BenchOptions
from worker.cli import build_parser as worker_parser

WORKER = Path(__file__).resolve().parents[2] / "worker"
IMPORTS_BENCH = re.compile(r"^\s*(from\s+bench(\.|\s)|import\s+bench\b)", re.MULTILINE)


def test_the_worker_imports_nothing_of_the_benchmark():
    sources = sorted(WORKER.rglob("*.py"))
    assert sources and not [str(p) for p in sources if IMPORTS_BENCH.search(p.read_text())]


def test_lstm_worker_has_no_bench_subcommand(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        worker_parser().parse_args(["bench"])
    assert "invalid choice: 'bench'" in capsys.readouterr().err


def test_every_option_of_a_run_is_a_flag_with_the_same_default():
    args = vars(build_parser().parse_args([]))
    for field in dataclasses.fields(BenchOptions):
        assert args[field.name] == field.default, field.name
