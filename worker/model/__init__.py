"""Model side of the worker: load a Keras model safely and serve it one step at a time."""

from worker.model.loader import check_features, fingerprint, load_model
from worker.model.reference import make_reference_model, save_model
from worker.model.twin import StreamingTwin

__all__ = [
    "StreamingTwin",
    "check_features",
    "fingerprint",
    "load_model",
    "make_reference_model",
    "save_model",
]
