"""Loading a served model safely, and naming it by what it computes.

`load_model` accepts only `.keras` files and loads them in safe mode, so a model file
cannot run code on the worker. `fingerprint` identifies a model by architecture and
weights, so that carried hidden state is never resumed under a different model.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import keras
import numpy as np

from worker.errors import ModelError

_FINGERPRINT_CHARS = 16


def load_model(path: str) -> keras.Model:
    """Load a `.keras` file without compiling it and without deserializing code."""
    if os.path.isdir(path):
        raise ModelError(
            f"model path {path!r} is a directory (a TF SavedModel?): only .keras files are "
            "supported, because Keras 3 cannot load a SavedModel as a model with layers; "
            "re-save it with model.save('model.keras')"
        )
    if not os.path.exists(path):
        raise ModelError(f"model file not found: {path!r}")
    if not path.endswith(".keras"):
        raise ModelError(
            f"model file {path!r} is not a .keras file: only .keras files are supported; "
            "re-save it with model.save('model.keras')"
        )
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        if "safe_mode" in str(exc):
            raise ModelError(
                f"cannot load model {path!r}: the model contains code (Lambda) that safe mode "
                "refuses to deserialize; rebuild it with built-in layers only and re-save it "
                f"({exc})"
            ) from exc
        raise ModelError(f"cannot load model {path!r}: {exc}") from exc
    if not isinstance(model, keras.Model):
        raise ModelError(f"{path!r} holds a {type(model).__name__}, not a keras.Model")
    return model


def check_features(model_features: int, event_features: int, path: str) -> None:
    """Refuse at start a model that cannot take the events, rather than dead-letter every one."""
    if event_features and model_features != event_features:
        raise ModelError(
            f"model {path!r} takes {model_features} features per step, but --features says the events carry "
            f"{event_features}: serve a model trained on {event_features} features, or correct --features"
        )


def fingerprint(model: keras.Model) -> str:
    """Hash architecture and weights; layer names keras auto-numbers do not count."""
    config = json.loads(model.to_json())
    canonical = json.dumps(_rename(config, _auto_names(config)), sort_keys=True)
    digest = hashlib.sha256(canonical.encode())
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{value.dtype.str}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:_FINGERPRINT_CHARS]


def _auto_names(config: dict[str, Any]) -> dict[str, str]:
    """Map the model's and its top-level layers' names to positional placeholders.

    Names differ between two in-process builds of the same model (lstm vs lstm_1)
    and are referenced elsewhere in a functional config, so they are replaced
    wherever they occur rather than dropped.
    """
    inner = config.get("config", {})
    names = {inner["name"]: "<model>"} if "name" in inner else {}
    for i, layer in enumerate(inner.get("layers", [])):
        name = layer.get("config", {}).get("name")
        if isinstance(name, str):
            names[name] = f"<layer {i}>"
    return names


def _rename(node: Any, names: dict[str, str]) -> Any:
    """Replace every string value that is a layer or model name."""
    if isinstance(node, dict):
        return {key: _rename(value, names) for key, value in node.items()}
    if isinstance(node, list):
        return [_rename(value, names) for value in node]
    if isinstance(node, str):
        return names.get(node, node)
    return node
