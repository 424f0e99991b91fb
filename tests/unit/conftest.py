"""Fixtures of the unit tests that read settings."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LSTM_WORKER_* variable of the machine leaks into a unit test."""
    for name in list(os.environ):
        if name.startswith("LSTM_WORKER_"):
            monkeypatch.delenv(name)


@pytest.fixture
def model_file(tmp_path) -> str:
    """A file where a model path is checked for existence only."""
    path = tmp_path / "model.keras"
    path.write_bytes(b"not really a model")
    return str(path)
