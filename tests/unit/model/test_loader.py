"""Loading is safe and explains its refusals; fingerprints follow weights, not names."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from worker.errors import ConfigError, ModelError
from worker.model import check_features, fingerprint, load_model, make_reference_model, save_model


def _small(seed: int = 0) -> keras.Model:
    return make_reference_model(units=(8, 16), seed=seed)


def test_round_trip_keeps_fingerprint_and_outputs(tmp_path: Path) -> None:
    model = make_reference_model()
    path = str(tmp_path / "reference.keras")
    save_model(model, path)
    loaded = load_model(path)
    assert fingerprint(loaded) == fingerprint(model)
    assert fingerprint(load_model(path)) == fingerprint(loaded)
    x = np.random.default_rng(0).normal(size=(3, 7, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_fingerprint_is_short_hex_and_ignores_auto_numbered_names() -> None:
    first, second = _small(seed=0), _small(seed=0)
    assert [layer.name for layer in first.layers] != [layer.name for layer in second.layers]
    assert fingerprint(first) == fingerprint(second)
    assert len(fingerprint(first)) == 16
    int(fingerprint(first), 16)


def test_fingerprint_changes_with_weights() -> None:
    assert fingerprint(_small(seed=0)) != fingerprint(_small(seed=1))
    model = _small(seed=0)
    before = fingerprint(model)
    kernel = model.layers[-1].kernel
    kernel.assign(keras.ops.convert_to_numpy(kernel) + 1e-3)
    assert fingerprint(model) != before


def test_fingerprint_changes_with_architecture() -> None:
    model = _small(seed=0)
    other = keras.Sequential(
        [
            keras.Input(shape=(None, 4)),
            keras.layers.LSTM(8, return_sequences=True),
            keras.layers.LSTM(16),
            keras.layers.Dense(1, activation="linear"),
        ]
    )
    other.set_weights(model.get_weights())
    assert fingerprint(other) != fingerprint(model)


def test_lambda_model_is_refused_by_safe_mode(tmp_path: Path) -> None:
    model = keras.Sequential(
        [
            keras.Input(shape=(None, 4)),
            keras.layers.Lambda(lambda t: t * 2.0),
            keras.layers.LSTM(4),
        ]
    )
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    with pytest.raises(ModelError, match=r"contains code \(Lambda\).*safe mode") as info:
        load_model(path)
    assert path in str(info.value)
    assert info.value.__cause__ is not None


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "nowhere.keras")
    with pytest.raises(ModelError, match="not found") as info:
        load_model(path)
    assert path in str(info.value)


def test_saved_model_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"only \.keras files are supported"):
        load_model(str(tmp_path))


def test_other_formats_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    path.write_bytes(b"not really hdf5")
    with pytest.raises(ModelError, match=r"not a \.keras file"):
        load_model(str(path))


def test_corrupt_file_reports_path_and_cause(tmp_path: Path) -> None:
    path = tmp_path / "broken.keras"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(ModelError, match="cannot load model") as info:
        load_model(str(path))
    assert str(path) in str(info.value)
    assert info.value.__cause__ is not None


def test_reference_model_shape_and_cells() -> None:
    model = make_reference_model(features=3, units=(5, 6, 7), cell="gru", seed=2)
    assert [type(layer).__name__ for layer in model.layers] == ["GRU", "GRU", "GRU", "Dense"]
    assert [layer.return_sequences for layer in model.layers[:3]] == [True, True, False]
    assert model.outputs[0].shape == (None, 1)
    assert model.inputs[0].shape == (None, None, 3)


def test_reference_model_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cell"):
        make_reference_model(cell="transformer")
    with pytest.raises(ConfigError, match="units"):
        make_reference_model(units=())
    with pytest.raises(ConfigError, match=r"\.keras"):
        save_model(_small(), str(tmp_path / "model.h5"))


def test_a_model_of_another_feature_count_than_the_events_is_refused() -> None:
    with pytest.raises(ModelError, match=r"takes 4 features per step, but --features says the events carry 3"):
        check_features(4, 3, "m.keras")
    check_features(4, 4, "m.keras")
    check_features(4, 0, "m.keras")  # not given: the model decides
