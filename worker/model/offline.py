"""The original model on full histories: the reference every streamed prediction must equal.

One model call per prefix length, over every sequence at least that long, exactly as
the source's "classic" approach would predict at each event. The call is the model's
own, compiled once for any batch size and length, so checking stays affordable.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

_CHUNK = 1024


def compiled_call(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """model(x) traced once for [batch, time, features] of any size."""
    features = int(model.input_shape[-1])
    fn = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, None, features], tf.float32)]
    )
    return lambda x: fn(tf.constant(x, dtype=tf.float32)).numpy()


def full_history_predictions(model: keras.Model, sequences: list[np.ndarray]) -> list[np.ndarray]:
    """For each sequence [L, F], the model's output after each prefix [:i+1], as [L, out]."""
    call = compiled_call(model)
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    out = [np.empty(0, dtype=np.float32) for _ in sequences]
    for length in range(1, int(lengths.max(initial=0)) + 1):
        members = np.flatnonzero(lengths >= length)
        for start in range(0, len(members), _CHUNK):
            chunk = members[start : start + _CHUNK]
            y = call(np.stack([sequences[i][:length] for i in chunk]))
            if y.ndim == 3:  # a model that returns sequences: its last step is this prefix's output
                y = y[:, -1]
            for row, i in enumerate(chunk):
                if length == 1:
                    out[i] = np.empty((lengths[i], y.shape[-1]), dtype=np.float32)
                out[i][length - 1] = y[row]
    return out
