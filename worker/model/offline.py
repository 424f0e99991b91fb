"""The original model on full histories: the reference every streamed prediction must equal.

One model call per prefix length, over every sequence at least that long, exactly as
the source's "classic" approach would predict at each event (and as slowly).
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1024


def full_history_predictions(model: object, sequences: list[np.ndarray]) -> list[np.ndarray]:
    """For each sequence [L, F], the model's output after each prefix [:i+1], as [L, out]."""
    if not sequences:
        return []
    lengths = np.array([len(s) for s in sequences])
    out: list[np.ndarray | None] = [None] * len(sequences)
    for length in range(1, int(lengths.max()) + 1):
        members = np.flatnonzero(lengths >= length)
        for start in range(0, len(members), _CHUNK):
            chunk = members[start : start + _CHUNK]
            batch = np.stack([sequences[i][:length] for i in chunk]).astype(np.float32)
            y = np.asarray(model(batch, training=False))  # type: ignore[operator]
            if y.ndim == 3:  # a model that returns sequences: its last step is this prefix's output
                y = y[:, -1]
            for row, i in enumerate(chunk):
                if out[i] is None:
                    out[i] = np.empty((lengths[i], y.shape[-1]), dtype=np.float32)
                out[i][length - 1] = y[row]  # type: ignore[index]
    return [o for o in out if o is not None]
