"""The reference model of the blog the product grew from, built and saved reproducibly.

4 features -> LSTM 100 -> LSTM 200 -> Dense 1 sigmoid, untrained: it exists so that
demos, benchmarks and tests have a realistic model without shipping a trained file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras

from worker.errors import ConfigError

_CELLS: dict[str, type[keras.layers.Layer]] = {
    "lstm": keras.layers.LSTM,
    "gru": keras.layers.GRU,
    "simple": keras.layers.SimpleRNN,
}


def make_reference_model(
    features: int = 4,
    units: Sequence[int] = (100, 200),
    cell: str = "lstm",
    seed: int = 0,
) -> keras.Model:
    """Build the untrained stacked-recurrent model; the same seed gives the same weights."""
    if cell not in _CELLS:
        raise ConfigError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}")
    if not units or any(u <= 0 for u in units):
        raise ConfigError(f"units must be a non-empty list of positive sizes, got {list(units)}")
    if features <= 0:
        raise ConfigError(f"features must be positive, got {features}")
    keras.utils.set_random_seed(seed)
    recurrent = _CELLS[cell]
    model = keras.Sequential([keras.Input(shape=(None, features))])
    for i, size in enumerate(units):
        model.add(recurrent(size, return_sequences=i < len(units) - 1))
    model.add(keras.layers.Dense(1, activation="sigmoid"))
    return model


def save_model(model: keras.Model, path: str) -> None:
    """Write `model` as a `.keras` file, the only format the loader accepts."""
    if not path.endswith(".keras"):
        raise ConfigError(f"model path must end with .keras, got {path!r}")
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    model.save(path)
