"""Configuration: worker/config.py (librdkafka pass-through, redaction, RunConfig validation)
and the argument parsing of worker/cli.py (flags, `LSTM_WORKER_<OPTION>` defaults).
"""

import logging
import os

import pytest

from worker.cli import build_parser, main
from worker.config import (
    PROTOCOL_KAFKA_KEYS,
    KafkaConfig,
    RegistryConfig,
    RunConfig,
    is_secret,
    parse_kafka_overrides,
    parse_registry_overrides,
    redact,
    redact_text,
)
from worker.errors import AuthError, ConfigError

RUN_ARGS = ["run", "--model", "m.keras", "--input-topic", "events", "--output-topic", "preds"]


def run_config(model_path, **overrides):
    fields = {
        "kafka": KafkaConfig("127.0.0.1:9092"),
        "model_path": model_path,
        "input_topic": "events",
        "output_topic": "preds",
        "state_topic": "events.state",
        "dlq_topic": "events.dlq",
    }
    fields.update(overrides)
    return RunConfig(**fields)


# --- librdkafka pass-through ---------------------------------------------------------------


def test_kafka_env_variables_become_dotted_settings():
    environ = {
        "LSTM_WORKER_KAFKA_SASL_MECHANISM": "PLAIN",
        "LSTM_WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "LSTM_WORKER_MAX_STEPS": "4",  # a worker option, not a librdkafka setting
        "LSTM_WORKER_KAFKA_": "ignored",
        "KAFKA_SASL_USERNAME": "not ours",
    }
    assert parse_kafka_overrides([], environ) == (("sasl.mechanism", "PLAIN"), ("security.protocol", "SASL_SSL"))


def test_x_flag_wins_over_env_and_keeps_everything_after_the_first_equals():
    environ = {"LSTM_WORKER_KAFKA_SASL_MECHANISM": "PLAIN"}
    pairs = ["sasl.mechanism=SCRAM-SHA-512", " client.id =a=b", "sasl.password="]
    assert parse_kafka_overrides(pairs, environ) == (
        ("client.id", "a=b"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.password", ""),
    )


def test_later_x_flag_wins_over_earlier():
    assert parse_kafka_overrides(["linger.ms=1", "linger.ms=20"], {}) == (("linger.ms", "20"),)


@pytest.mark.parametrize("pair", ["security.protocol", "=SASL_SSL", " =x", ""])
def test_malformed_x_flag_is_config_error(pair):
    with pytest.raises(ConfigError, match="key=value"):
        parse_kafka_overrides([pair], {})


@pytest.mark.parametrize(
    "key", ["enable.auto.commit", "enable.auto.offset.store", "group.id", "enable.idempotence", "acks"]
)
def test_reserved_key_by_flag_is_refused(key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_kafka_overrides([f"{key}=x"], {})


def test_reserved_key_by_env_is_refused():
    with pytest.raises(ConfigError, match=r"enable\.auto\.commit"):
        parse_kafka_overrides([], {"LSTM_WORKER_KAFKA_ENABLE_AUTO_COMMIT": "true"})


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("isolation.level", "the state restore must never read aborted states"),
        ("transactional.id", "exactly once fences stale members"),
        ("message.timeout.ms", "must never expire"),
        ("delivery.timeout.ms", "alias of message.timeout.ms"),
        ("enable.partition.eof", "end of a partition"),
        ("delivery.report.only.error", "every state record's delivery report"),
        ("on_delivery", "delivery callback"),
        ("on_commit", "commit callback"),
        ("group.instance.id", "--group-instance-id"),
        ("bootstrap.servers", "--bootstrap-servers"),
    ],
)
def test_protocol_owned_key_is_refused_with_its_reason(key, reason):
    with pytest.raises(ConfigError) as info:
        parse_kafka_overrides([f"{key}=x"], {})
    message = str(info.value)
    assert message.startswith(f"-X {key}: set by the worker (") and message.endswith("); remove it"), message
    assert reason in message


def test_refusal_message_reads_as_documented():
    with pytest.raises(ConfigError) as info:
        parse_kafka_overrides(["isolation.level=read_uncommitted"], {})
    assert str(info.value) == (
        "-X isolation.level: set by the worker (the state restore must never read aborted states); remove it"
    )


def test_protocol_owned_key_by_env_names_the_variable():
    with pytest.raises(ConfigError) as info:
        parse_kafka_overrides([], {"LSTM_WORKER_KAFKA_ISOLATION_LEVEL": "read_uncommitted"})
    assert str(info.value).startswith("LSTM_WORKER_KAFKA_ISOLATION_LEVEL (isolation.level): set by the worker (")
    assert "read_uncommitted" not in str(info.value)


def test_every_refused_key_is_listed_with_its_own_reason_and_no_value():
    environ = {"LSTM_WORKER_KAFKA_MESSAGE_TIMEOUT_MS": "60000", "LSTM_WORKER_KAFKA_SASL_PASSWORD": "hunter2"}
    with pytest.raises(ConfigError) as info:
        parse_kafka_overrides(["Isolation.Level=hunter2", "transactional.id=hunter2", "linger.ms=9"], environ)
    parts = str(info.value).split("; remove it")
    assert len(parts) == 4 and parts[-1] == "", str(info.value)  # three keys, each with its reason
    assert "-X Isolation.Level: set by the worker (" in parts[0]
    assert "LSTM_WORKER_KAFKA_MESSAGE_TIMEOUT_MS (message.timeout.ms)" in parts[1]
    assert "-X transactional.id" in parts[2]
    assert "hunter2" not in str(info.value) and "60000" not in str(info.value) and "linger" not in str(info.value)


@pytest.mark.parametrize(
    "pair",
    [
        "auto.offset.reset=latest",
        "queue.buffering.max.messages=100000",
        "transaction.timeout.ms=10000",
        "session.timeout.ms=45000",
        "heartbeat.interval.ms=3000",
        "metadata.recovery.strategy=rebootstrap",
        "linger.ms=20",
        "compression.type=lz4",
        "fetch.min.bytes=1",
    ],
)
def test_tuning_keys_pass(pair):
    key, _, value = pair.partition("=")
    assert dict(parse_kafka_overrides([pair], {}))[key] == value


def test_every_key_the_client_settings_carry_is_classified():
    """A key the worker starts setting must be decided on: protocol-owned (refused) or tuning."""
    tuning = {
        "linger.ms",
        "queue.buffering.max.messages",
        "queue.buffering.max.kbytes",
        "compression.type",
        "auto.offset.reset",
        "metadata.recovery.strategy",
    }
    kafka = KafkaConfig("b:9092")
    carried = {*kafka.producer(), *kafka.consumer("g"), *kafka.admin()}
    assert carried - tuning - set(PROTOCOL_KAFKA_KEYS) == set()
    assert not tuning & set(PROTOCOL_KAFKA_KEYS)


def test_overrides_reach_producer_and_consumer_but_not_the_protocol_settings():
    kafka = KafkaConfig("broker:9093", parse_kafka_overrides(["linger.ms=50", "security.protocol=SSL"], {}))
    producer = kafka.producer()
    assert producer["bootstrap.servers"] == "broker:9093"
    assert (producer["linger.ms"], producer["security.protocol"]) == ("50", "SSL")
    assert (producer["enable.idempotence"], producer["acks"]) == (True, "all")
    consumer = kafka.consumer("g1")
    assert consumer["group.id"] == "g1"
    assert consumer["enable.auto.commit"] is False
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["security.protocol"] == "SSL"


def test_every_client_backs_off_in_an_outage_unless_rebootstrap_is_asked_for():
    default = KafkaConfig("broker:9093")
    for settings in (default.producer(), default.consumer("g1"), default.admin()):
        assert settings["metadata.recovery.strategy"] == "none"
    asked = KafkaConfig(
        "broker:9093", parse_kafka_overrides([], {"LSTM_WORKER_KAFKA_METADATA_RECOVERY_STRATEGY": "rebootstrap"})
    )
    for settings in (asked.producer(), asked.consumer("g1"), asked.admin()):
        assert settings["metadata.recovery.strategy"] == "rebootstrap"


# --- redaction ----------------------------------------------------------------------------


def test_redact_hides_secrets_and_keeps_the_rest():
    settings = {
        "bootstrap.servers": "b:9092",
        "sasl.username": "alice",
        "sasl.password": "hunter2",
        "ssl.key.password": "pw",
        "ssl.keystore.password": "pw2",
        "sasl.oauthbearer.client.secret": "s3",
        "sasl.oauthbearer.config": "principal=x secret=y",
        "ssl.key.pem": "-----BEGIN PRIVATE KEY-----",
        "oauth_cb": lambda _cfg: ("token", 0),
    }
    out = redact(settings)
    assert out == {
        "bootstrap.servers": "b:9092",
        "sasl.username": "alice",
        "sasl.password": "***",
        "ssl.key.password": "***",
        "ssl.keystore.password": "***",
        "sasl.oauthbearer.client.secret": "***",
        "sasl.oauthbearer.config": "***",
        "ssl.key.pem": "***",
    }
    assert settings["sasl.password"] == "hunter2"  # a copy: the original is untouched


def test_redact_of_a_real_producer_config_leaks_no_password():
    kafka = KafkaConfig("b:9092", parse_kafka_overrides(["sasl.password=hunter2"], {}))
    assert "hunter2" not in repr(redact(kafka.producer()))


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "SASL.PASSWORD",
        "ssl.keystore.password",
        "ssl.key.password",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.assertion.private.key.passphrase",
        "sasl.oauthbearer.assertion.private.key.pem",
        "ssl.key.pem",
    ],
)
def test_secret_settings_are_recognised(key):
    assert is_secret(key)


@pytest.mark.parametrize("key", ["sasl.username", "sasl.mechanism", "security.protocol", "ssl.ca.location"])
def test_plain_settings_are_not_secret(key):
    assert not is_secret(key)


def test_redact_text_hides_every_secret_value_longest_first():
    settings = {"sasl.password": "hunter2", "ssl.key.password": "hunter2-and-more", "sasl.username": "alice"}
    text = "user alice, password hunter2, key hunter2-and-more"
    assert redact_text(text, settings) == "user alice, password ***, key ***"
    assert redact_text("nothing to hide", {"sasl.password": ""}) == "nothing to hide"


def test_kafka_config_repr_hides_the_password():
    kafka = KafkaConfig("b:9092", parse_kafka_overrides(["sasl.username=alice", "sasl.password=hunter2"], {}))
    assert "hunter2" not in repr(kafka) and "hunter2" not in str(kafka)
    assert "'sasl.password': '***'" in repr(kafka) and "'sasl.username': 'alice'" in repr(kafka)
    assert dict(kafka.overrides)["sasl.password"] == "hunter2"  # the clients still get it


def test_run_config_repr_hides_the_password(model_file):
    kafka = KafkaConfig("b:9092", (("sasl.password", "hunter2"),))
    text = repr(run_config(model_file, kafka=kafka))
    assert "hunter2" not in text and "RunConfig(kafka=KafkaConfig(" in text


@pytest.mark.parametrize("pair", ["sasl.passwordhunter2", "=hunter2", " =hunter2"])
def test_malformed_x_flag_error_does_not_echo_a_secret(pair):
    with pytest.raises(ConfigError, match="key=value") as info:
        parse_kafka_overrides([pair], {})
    assert "hunter2" not in str(info.value)


def test_start_up_error_messages_are_scrubbed_of_passwords(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LSTM_WORKER_KAFKA_SSL_KEY_PASSWORD", "keypw-9f8e")
    missing = tmp_path / "hunter2-pw.keypw-9f8e.keras"  # a message that happens to quote both passwords
    argv = ["run", "--model", str(missing), "--input-topic", "in", "--output-topic", "out"]
    assert main([*argv, "-X", "sasl.password=hunter2-pw"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "hunter2-pw" not in err and "keypw-9f8e" not in err, err
    assert "***.***.keras" in err


def test_run_logs_its_configuration_redacted_before_connecting(model_file, capsys, caplog, monkeypatch):
    def refuse(kafka, group_id):
        raise AuthError(f"refused {dict(kafka.overrides)}")  # a careless message: main must scrub it

    monkeypatch.setattr("worker.kafka.access.check_client_access", refuse)
    argv = ["run", "--model", model_file, "--input-topic", "in", "--output-topic", "out", "--group-id", "g"]
    with caplog.at_level(logging.DEBUG):
        assert main([*argv, "-X", "sasl.username=alice", "-X", "sasl.password=hunter2"]) == 2
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "configuration: RunConfig(" in logged and "'sasl.password': '***'" in logged, logged
    err = capsys.readouterr().err
    assert "refused" in err and "'sasl.password': '***'" in err, err
    assert "hunter2" not in logged + err


@pytest.mark.parametrize(
    ("given", "step_threads", "expected"), [(None, [], "1"), ("2", [], "2"), (None, ["3"], "3"), ("2", ["3"], "2")]
)
def test_commands_run_the_blas_on_step_threads_unless_told_otherwise(
    model_file, monkeypatch, given, step_threads, expected
):
    monkeypatch.setattr("worker.kafka.access.check_client_access", lambda kafka, group: 1 / 0)
    if given is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", given)
    flag = ["--step-threads", *step_threads] if step_threads else []
    with pytest.raises(ZeroDivisionError):  # stopped before anything connects
        main(["run", "--model", model_file, "--input-topic", "in", "--output-topic", "out", *flag])
    assert os.environ["OPENBLAS_NUM_THREADS"] == expected


def test_x_settings_win_over_the_workers_tuning():
    kafka = KafkaConfig("b:9092", (("session.timeout.ms", "45000"), ("linger.ms", "50")))
    assert (
        kafka.consumer("g", **{"session.timeout.ms": 10000, "fetch.wait.max.ms": 20})["session.timeout.ms"] == "45000"
    )
    assert kafka.consumer("g", **{"fetch.wait.max.ms": 20})["fetch.wait.max.ms"] == 20
    assert kafka.producer(**{"linger.ms": 0})["linger.ms"] == "50"


# --- RunConfig ----------------------------------------------------------------------------


def test_valid_run_config_and_defaults(model_file):
    config = run_config(model_file)
    assert (config.max_batch_keys, config.max_steps, config.cache_keys) == (1024, 16, 100_000)
    assert config.round_keys == 1024
    assert config.backend == "auto"


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("max_batch_keys", 0, "--max-batch-keys"),
        ("max_steps", 0, "--max-steps"),
        ("cache_keys", -1, "--cache-keys"),
        ("commit_interval_ms", 0, "--commit-interval-ms"),
        ("max_event_bytes", 0, "--max-event-bytes"),
        ("poll_batch", 0, "--poll-batch"),
        ("metrics_port", -1, "--metrics-port"),
        ("metrics_port", 65536, "--metrics-port"),
        ("backend", "jax", "--backend"),
        ("replication_factor", -1, "--replication-factor"),
    ],
)
def test_bad_value_is_config_error_naming_the_flag(model_file, field, value, flag):
    with pytest.raises(ConfigError, match=flag):
        run_config(model_file, **{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metrics_port", 0),
        ("metrics_port", 65535),
        ("max_batch_keys", 1),
        ("cache_keys", 1),
        ("replication_factor", 0),
        ("replication_factor", 3),
    ],
)
def test_boundary_values_are_accepted(model_file, field, value):
    assert getattr(run_config(model_file, **{field: value}), field) == value


@pytest.mark.parametrize(
    "topics",
    [
        {"output_topic": "events"},
        {"state_topic": "preds"},
        {"dlq_topic": "events.state"},
        {"dlq_topic": "events"},
    ],
)
def test_duplicate_topics_are_config_error(model_file, topics):
    with pytest.raises(ConfigError, match="must all differ"):
        run_config(model_file, **topics)


def test_missing_model_file_is_config_error(tmp_path):
    missing = str(tmp_path / "nope.keras")
    with pytest.raises(ConfigError, match="--model") as info:
        run_config(missing)
    assert "nope.keras" in str(info.value)


def test_saved_model_directory_is_accepted(tmp_path):
    assert run_config(str(tmp_path)).model_path == str(tmp_path)


@pytest.mark.parametrize(("batch_keys", "cache_keys", "expected"), [(256, 100, 100), (64, 100_000, 64), (50, 50, 50)])
def test_round_keys_is_the_smaller_of_batch_keys_and_cache_keys(model_file, batch_keys, cache_keys, expected):
    assert run_config(model_file, max_batch_keys=batch_keys, cache_keys=cache_keys).round_keys == expected


def test_commit_interval_defaults_by_guarantee_and_a_given_one_wins(model_file):
    """At least once, a longer interval means less state traffic; exactly once, it is the
    latency of the transaction's outputs."""
    assert run_config(model_file).commit_interval_s == 30.0
    assert run_config(model_file, processing_guarantee="exactly_once_v2").commit_interval_s == 1.0
    assert run_config(model_file, commit_interval_ms=250).commit_interval_s == 0.25
    exactly_once = run_config(model_file, processing_guarantee="exactly_once_v2", commit_interval_ms=3000)
    assert exactly_once.commit_interval_s == 3.0


def test_run_config_is_frozen(model_file):
    config = run_config(model_file)
    with pytest.raises(AttributeError):
        config.max_steps = 1


# --- CLI parsing --------------------------------------------------------------------------


def test_run_defaults_without_env():
    args = build_parser().parse_args(RUN_ARGS)
    assert args.command == "run"
    assert (args.model, args.input_topic, args.output_topic) == ("m.keras", "events", "preds")
    assert (args.state_topic, args.dlq_topic) == (None, None)
    assert (args.max_batch_keys, args.max_steps, args.cache_keys) == (1024, 16, 100_000)
    assert args.bootstrap_servers == "127.0.0.1:9092"
    assert args.kafka_settings == []


def test_env_variable_is_the_default(monkeypatch):
    monkeypatch.setenv("LSTM_WORKER_MAX_STEPS", "7")
    monkeypatch.setenv("LSTM_WORKER_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("LSTM_WORKER_STATE_TOPIC", "custom.state")
    args = build_parser().parse_args(RUN_ARGS)
    assert args.max_steps == 7
    assert args.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert args.state_topic == "custom.state"


def test_replication_factor_defaults_to_the_inputs_and_reads_its_variable(monkeypatch):
    assert build_parser().parse_args(RUN_ARGS).replication_factor == 0
    monkeypatch.setenv("LSTM_WORKER_REPLICATION_FACTOR", "3")
    assert build_parser().parse_args(RUN_ARGS).replication_factor == 3
    assert build_parser().parse_args([*RUN_ARGS, "--replication-factor", "2"]).replication_factor == 2


def test_flag_overrides_env(monkeypatch):
    monkeypatch.setenv("LSTM_WORKER_MAX_STEPS", "7")
    monkeypatch.setenv("LSTM_WORKER_GROUP_ID", "from-env")
    args = build_parser().parse_args([*RUN_ARGS, "--max-steps", "3", "--group-id", "from-flag"])
    assert args.max_steps == 3
    assert args.group_id == "from-flag"


def test_env_satisfies_required_options(monkeypatch):
    monkeypatch.setenv("LSTM_WORKER_MODEL", "env.keras")
    monkeypatch.setenv("LSTM_WORKER_INPUT_TOPIC", "in")
    monkeypatch.setenv("LSTM_WORKER_OUTPUT_TOPIC", "out")
    args = build_parser().parse_args(["run"])
    assert (args.model, args.input_topic, args.output_topic) == ("env.keras", "in", "out")


def test_missing_required_option_exits():
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["run", "--model", "m.keras"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("name", "value", "argv"),
    [
        ("LSTM_WORKER_MAX_BATCH_KEYS", "many", RUN_ARGS),
        ("LSTM_WORKER_METRICS_PORT", "9100x", RUN_ARGS),
        ("LSTM_WORKER_RATE", "fast", ["produce", "--topic", "events"]),
    ],
)
def test_bad_number_in_env_exits_naming_the_variable(monkeypatch, capsys, name, value, argv):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert name in capsys.readouterr().err


def test_bad_number_in_flag_exits():
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*RUN_ARGS, "--max-steps", "three"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("name", "value", "argv"),
    [
        ("LSTM_WORKER_CELL", "transformer", ["make-model", "--out", "m.keras"]),
        ("LSTM_WORKER_X_FORMAT", "csv", ["produce", "--topic", "events"]),
        ("LSTM_WORKER_BACKEND", "jax", ["run", "--model", "m.keras", "--input-topic", "i", "--output-topic", "o"]),
    ],
)
def test_env_value_outside_the_choices_exits(monkeypatch, name, value, argv):
    """An env default must be checked like the flag it stands for (argparse skips choices for defaults)."""
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


def test_env_value_inside_the_choices_is_used(monkeypatch):
    monkeypatch.setenv("LSTM_WORKER_CELL", "gru")
    assert build_parser().parse_args(["make-model", "--out", "m.keras"]).cell == "gru"


def test_x_flags_are_collected_and_merged_with_kafka_env(monkeypatch):
    monkeypatch.setenv("LSTM_WORKER_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("LSTM_WORKER_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    args = build_parser().parse_args([*RUN_ARGS, "-X", "sasl.mechanism=SCRAM-SHA-256", "-X", "linger.ms=10"])
    assert args.kafka_settings == ["sasl.mechanism=SCRAM-SHA-256", "linger.ms=10"]
    assert dict(parse_kafka_overrides(args.kafka_settings, os.environ)) == {
        "sasl.mechanism": "SCRAM-SHA-256",
        "security.protocol": "SASL_SSL",
        "linger.ms": "10",
    }


def test_float_and_int_options_of_other_commands(monkeypatch):
    monkeypatch.setenv("LSTM_WORKER_TOLERANCE", "1e-4")
    args = build_parser().parse_args(["verify", "--model", "m", "--input-topic", "i", "--output-topic", "o"])
    assert args.tolerance == pytest.approx(1e-4)
    assert args.timeout_s == 60.0
    args = build_parser().parse_args(["produce", "--topic", "t", "--keys", "12", "--rate", "2.5"])
    assert (args.keys, args.rate, args.partitions, args.x_format) == (12, 2.5, 4, "bytes")


# --- value formats and the Schema Registry -----------------------------------------------------


def test_avro_without_a_registry_is_refused_naming_the_format_flag_and_the_registry_setting(model_file):
    with pytest.raises(ConfigError) as info:
        run_config(model_file, input_format="avro")
    assert str(info.value) == (
        "--input-format avro needs a Schema Registry: set --schema-registry-url or LSTM_WORKER_SCHEMA_REGISTRY_URL"
    )
    with pytest.raises(ConfigError, match=r"^--output-format avro needs a Schema Registry"):
        run_config(model_file, input_format="json", output_format="avro")
    config = run_config(model_file, input_format="avro", registry=RegistryConfig("http://r:8081"))
    assert config.prediction_format == "avro"
    assert run_config(model_file, input_format="json").prediction_format == "json"
    assert (
        run_config(model_file, input_format="avro", output_format="msgpack", registry=config.registry).prediction_format
        == "msgpack"
    )


def test_registry_settings_pass_through_like_librdkafka_settings_and_hide_secrets():
    environ = {"LSTM_WORKER_REGISTRY_BASIC_AUTH_USER_INFO": "ann:s3cret", "LSTM_WORKER_REGISTRY_TIMEOUT": "5"}
    overrides = parse_registry_overrides(["timeout=7", "ssl.ca.location=/ca.pem"], environ)
    assert overrides == (("basic.auth.user.info", "ann:s3cret"), ("ssl.ca.location", "/ca.pem"), ("timeout", "7"))
    config = RegistryConfig("http://r:8081", overrides)
    assert config.client()["url"] == "http://r:8081" and config.client()["timeout"] == "7"
    assert "s3cret" not in repr(config) and "***" in repr(config)
    with pytest.raises(ConfigError, match=r"^-S url: set by the worker \(given by --schema-registry-url"):
        parse_registry_overrides(["url=http://elsewhere"], {})
    with pytest.raises(ConfigError, match=r"^-S 'timeout': expected key=value, e.g. -S basic.auth.user.info="):
        parse_registry_overrides(["timeout"], {})


def test_the_run_parser_builds_the_registry_config_from_flags_and_variables(monkeypatch, capsys, model_file):
    monkeypatch.setenv("LSTM_WORKER_REGISTRY_BASIC_AUTH_USER_INFO", "ann:s3cret")
    monkeypatch.setenv("LSTM_WORKER_INPUT_FORMAT", "avro")
    args = build_parser().parse_args([*RUN_ARGS, "--schema-registry-url", "http://r:8081", "-S", "timeout=3"])
    assert (args.input_format, args.output_format, args.schema_registry_url) == ("avro", None, "http://r:8081")
    assert args.registry_settings == ["timeout=3"]
    monkeypatch.setenv("LSTM_WORKER_INPUT_FORMAT", "xml")
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(RUN_ARGS)
    assert info.value.code == 2
    assert "LSTM_WORKER_INPUT_FORMAT='xml' is not a valid value for --input-format" in capsys.readouterr().err


def test_avro_commands_without_a_registry_or_with_bad_registry_settings_exit_2(capsys):
    assert main(["produce", "--topic", "t", "--format", "avro"]) == 2
    assert "avro needs a Schema Registry: set --schema-registry-url" in capsys.readouterr().err
    url = ["--schema-registry-url", "http://127.0.0.1:1"]
    assert (
        main(
            [
                "verify",
                "--model",
                "m",
                "--input-topic",
                "i",
                "--output-topic",
                "o",
                "--output-format",
                "avro",
                *url,
                "-S",
                "no.such.key=1",
            ]
        )
        == 2
    )
    assert (
        "the Schema Registry settings are not accepted: Unrecognized properties: no.such.key" in capsys.readouterr().err
    )
    assert main(["produce", "--topic", "t", "--format", "avro", *url, "-S", "timeout=soon"]) == 2
    assert "-S timeout='soon': expected a number" in capsys.readouterr().err
