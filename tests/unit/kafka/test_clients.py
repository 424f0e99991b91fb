"""The worker's client settings (worker/kafka/clients.py): predictions leave at once, state records
and transactions batch, and -X wins over both."""

from worker.config import KafkaConfig, RunConfig
from worker.kafka.clients import PREDICTION_LINGER_MS, STATE_LINGER_MS, output_settings


def config(model_file: str, overrides: tuple[tuple[str, str], ...] = ()) -> RunConfig:
    return RunConfig(KafkaConfig("127.0.0.1:9092", overrides), model_file, "events", "preds", "events.state", "e.dlq")


def test_at_least_once_predictions_linger_less_than_states(model_file):
    predictions, states = output_settings(config(model_file))
    assert states is not None
    assert (predictions["linger.ms"], states["linger.ms"]) == (PREDICTION_LINGER_MS, STATE_LINGER_MS) == (1, 5)
    assert predictions["message.timeout.ms"] == states["message.timeout.ms"] == 0


def test_exactly_once_is_one_client(model_file):
    settings, states = output_settings(config(model_file), transactional="g.member")
    assert states is None
    assert (settings["transactional.id"], settings["linger.ms"]) == ("g.member", STATE_LINGER_MS)


def test_linger_given_by_x_wins_on_both_clients(model_file):
    predictions, states = output_settings(config(model_file, (("linger.ms", "20"),)))
    assert states is not None
    assert predictions["linger.ms"] == states["linger.ms"] == "20"
