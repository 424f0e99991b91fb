"""The option tables of worker/options.py: they alone declare the parser of `run`, RunConfig's
defaults and validation, and docs/configuration.md."""

import dataclasses
import math
import typing
from pathlib import Path

import pytest

from worker.cli import build_parser
from worker.config import PROTOCOL_KAFKA_KEYS, PROTOCOL_REGISTRY_KEYS, KafkaConfig, RunConfig
from worker.errors import ConfigError
from worker.options import KAFKA_OPTIONS, REGENERATE, RUN, RUN_OPTIONS, reference

REPO = Path(__file__).resolve().parents[2]
RUN_ARGS = ["run", "--model", "m.keras", "--input-topic", "events", "--output-topic", "preds"]


def test_committed_configuration_reference_is_the_generated_one():
    committed = (REPO / "docs" / "configuration.md").read_text()
    generated = reference(PROTOCOL_KAFKA_KEYS, PROTOCOL_REGISTRY_KEYS)
    assert committed == generated, f"docs/configuration.md is stale: run `{REGENERATE}`"
    assert committed.splitlines()[0].startswith("<!--") and REGENERATE in committed.splitlines()[0]


def test_reference_lists_every_option_and_every_refused_kafka_key():
    text = reference(PROTOCOL_KAFKA_KEYS, PROTOCOL_REGISTRY_KEYS)
    for option in KAFKA_OPTIONS + RUN_OPTIONS:
        assert f"| `{option.flag}` | `{option.env}` |" in text
    for key, why in PROTOCOL_KAFKA_KEYS.items():
        assert f"| `{key}` | {why} |" in text


def test_every_run_config_field_is_an_option_of_the_same_type_and_default():
    hints = typing.get_type_hints(RunConfig)
    for field in dataclasses.fields(RunConfig):
        if field.name in ("kafka", "registry"):  # the -X and -S pass-through beside their options
            continue
        option = RUN[field.name]
        expected = option.type | None if field.default is None else option.type
        assert hints[field.name] == expected, field.name
        if field.default is dataclasses.MISSING:
            assert option.required or option.unset, f"{field.name} has no default, so its option needs a value"
        else:
            assert field.default == option.default, field.name


def test_the_run_parser_has_every_option_with_its_default():
    parser_defaults = vars(build_parser().parse_args(RUN_ARGS))
    for option in KAFKA_OPTIONS + RUN_OPTIONS:
        if not option.required:
            assert parser_defaults[option.dest] == option.default, option.flag


@pytest.mark.parametrize("option", [o for o in RUN_OPTIONS if o.choices], ids=lambda o: o.flag)
def test_every_choice_is_accepted_by_flag_and_variable(monkeypatch, option):
    for choice in option.choices:
        assert getattr(build_parser().parse_args([*RUN_ARGS, option.flag, choice]), option.dest) == choice
        monkeypatch.setenv(option.env, choice)
        assert getattr(build_parser().parse_args(RUN_ARGS), option.dest) == choice


def test_a_bad_setting_names_its_flag_its_variable_and_what_to_set(model_file):
    kafka = KafkaConfig("b:9092")
    topics = {"input_topic": "i", "output_topic": "o", "state_topic": "s", "dlq_topic": "d"}
    with pytest.raises(ConfigError) as info:
        RunConfig(kafka, model_file, **topics, max_steps=0)
    assert str(info.value) == "--max-steps must be at least 1, got 0: set --max-steps or LSTM_WORKER_MAX_STEPS"
    with pytest.raises(ConfigError) as info:
        RunConfig(kafka, model_file, **topics, processing_guarantee="exactly_once")
    assert str(info.value) == (
        "--processing-guarantee must be at_least_once or exactly_once_v2, got 'exactly_once': "
        "set --processing-guarantee or LSTM_WORKER_PROCESSING_GUARANTEE"
    )


@pytest.mark.parametrize(("field", "value"), [("shutdown_timeout_s", math.nan), ("state_ttl_s", math.nan)])
def test_nan_is_refused_where_a_bound_applies(model_file, field, value):
    kafka = KafkaConfig("b:9092")
    with pytest.raises(ConfigError, match=RUN[field].flag):
        RunConfig(kafka, model_file, "i", "o", "s", "d", **{field: value})


def test_from_options_derives_the_state_and_dead_letter_topics(model_file, monkeypatch):
    args = build_parser().parse_args(["run", "--model", model_file, "--input-topic", "ev", "--output-topic", "p"])
    config = RunConfig.from_options(KafkaConfig("b:9092"), vars(args))
    assert (config.model_path, config.state_topic, config.dlq_topic) == (model_file, "ev.state", "ev.dlq")
    monkeypatch.setenv("LSTM_WORKER_STATE_TTL", "60")
    args = build_parser().parse_args([*RUN_ARGS[:2], model_file, *RUN_ARGS[3:], "--dlq-topic", "dead"])
    config = RunConfig.from_options(KafkaConfig("b:9092"), vars(args))
    assert (config.state_ttl_s, config.state_topic, config.dlq_topic) == (60.0, "events.state", "dead")


def test_log_level_is_taken_in_any_case(monkeypatch):
    assert build_parser().parse_args([*RUN_ARGS, "--log-level", "debug"]).log_level == "DEBUG"
    monkeypatch.setenv("LSTM_WORKER_LOG_LEVEL", "warning")
    assert build_parser().parse_args(RUN_ARGS).log_level == "WARNING"


def test_an_unknown_log_level_exits_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("LSTM_WORKER_LOG_LEVEL", "LOUD")
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(RUN_ARGS)
    assert info.value.code == 2
    assert "LSTM_WORKER_LOG_LEVEL='LOUD' is not a valid value for --log-level" in capsys.readouterr().err
