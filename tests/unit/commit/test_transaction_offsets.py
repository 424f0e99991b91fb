"""Pure pieces of the commit protocol: which input offsets a transaction sends (every transaction
that carries a record is fenced by the group's generation, KIP-447), and the shutdown bound's
option."""

from __future__ import annotations

import math

import pytest

from worker.cli import build_parser
from worker.commit.exactly_once import transaction_offsets
from worker.config import KafkaConfig, RunConfig
from worker.errors import ConfigError

RUN_ARGS = ["run", "--model", "m.keras", "--input-topic", "events", "--output-topic", "preds"]


def test_a_transaction_with_records_sends_every_known_position_changed_or_not():
    """Tombstones or dead letters alone, offsets unchanged: without the offsets the commit would
    not be checked against the group's generation, and a member that lost its partitions could
    still commit them."""
    positions = {0: 10, 1: 7}  # partitions with events consumed
    committed = {0: 10, 1: 7, 2: 4}  # 2: assigned, nothing consumed since its last commit
    assert transaction_offsets(positions, committed, carries_records=True) == {0: 10, 1: 7, 2: 4}


def test_a_transaction_with_records_sends_the_newer_position_over_the_committed_one():
    assert transaction_offsets({0: 12}, {0: 10, 1: 3}, carries_records=True) == {0: 12, 1: 3}


def test_an_empty_transaction_sends_only_changed_offsets():
    assert transaction_offsets({0: 10, 1: 9}, {0: 10, 1: 7}, carries_records=False) == {1: 9}
    assert transaction_offsets({0: 10}, {0: 10}, carries_records=False) == {}, "nothing to fence"


def run_config(tmp_path, **overrides):
    model = tmp_path / "m.keras"
    model.write_bytes(b"")
    fields = dict(
        kafka=KafkaConfig("127.0.0.1:9092"),
        model_path=str(model),
        input_topic="in",
        output_topic="out",
        state_topic="in.state",
        dlq_topic="in.dlq",
    )
    return RunConfig(**(fields | overrides))


def test_shutdown_timeout_defaults_below_the_orchestrators_grace_periods(tmp_path, monkeypatch):
    monkeypatch.delenv("LSTM_WORKER_SHUTDOWN_TIMEOUT_S", raising=False)
    assert build_parser().parse_args(RUN_ARGS).shutdown_timeout_s == 30.0
    assert run_config(tmp_path).shutdown_timeout_s == 30.0
    monkeypatch.setenv("LSTM_WORKER_SHUTDOWN_TIMEOUT_S", "12.5")
    assert build_parser().parse_args(RUN_ARGS).shutdown_timeout_s == 12.5
    assert build_parser().parse_args([*RUN_ARGS, "--shutdown-timeout-s", "7"]).shutdown_timeout_s == 7.0


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan])
def test_shutdown_timeout_must_be_positive(tmp_path, value):
    with pytest.raises(ConfigError, match="--shutdown-timeout-s must be more than 0 seconds"):
        run_config(tmp_path, shutdown_timeout_s=value)
