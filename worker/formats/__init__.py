"""The value formats of input and output topics: msgpack (worker.codec), JSON and Avro.

Whatever the format, a poll's event values are decoded together into columns (`DecodedEvents`)
and a round's predictions encoded together; the state topic is always the worker's msgpack.
docs/wire-format.md is the contract of all three.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from worker.codec import DecodedEvents, EventDecoder, Prediction, PredictionEncoder, decode_prediction, encode_event
from worker.options import Format

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

RecordTimestamps = Callable[[list[int]], list[int]]  # indexes of a poll's values -> their records' timestamps


class EventDecoding(Protocol):
    def decode(self, values: list[bytes | None], record_ts: RecordTimestamps) -> DecodedEvents: ...


class PredictionEncoding(Protocol):
    def encode(
        self, y: np.ndarray, ts: np.ndarray, partition: np.ndarray, offset: np.ndarray, step: np.ndarray
    ) -> list[bytes]: ...


EventEncoding = Callable[[np.ndarray | list[float], int | None, bool, bool], bytes]  # x, ts, reset, end -> value
PredictionDecoding = Callable[[bytes | None], Prediction]


def _needs(registry: SchemaRegistryClient | None) -> SchemaRegistryClient:
    if registry is None:  # RunConfig and the commands refuse avro without --schema-registry-url
        raise ValueError("avro needs a Schema Registry client")
    return registry


def event_decoder(
    fmt: Format, features: int, max_bytes: int, registry: SchemaRegistryClient | None = None
) -> EventDecoding:
    if fmt == "json":
        from worker.formats.json import JsonEventDecoder

        return JsonEventDecoder(features, max_bytes)
    if fmt == "avro":
        from worker.formats.avro import AvroEventDecoder

        return AvroEventDecoder(_needs(registry), features, max_bytes)
    return EventDecoder(features, max_bytes)


def prediction_encoder(
    fmt: Format, output_dim: int, model: str, topic: str, registry: SchemaRegistryClient | None = None
) -> PredictionEncoding:
    """Avro registers the Prediction schema under `<topic>-value` here, before any round."""
    if fmt == "json":
        from worker.formats.json import JsonPredictionEncoder

        return JsonPredictionEncoder(model)
    if fmt == "avro":
        from worker.formats.avro import AvroPredictionEncoder

        return AvroPredictionEncoder(_needs(registry), topic, model)
    return PredictionEncoder(output_dim, model)


def event_encoder(fmt: Format, topic: str, registry: SchemaRegistryClient | None = None) -> EventEncoding:
    """One event's value (producers: `lstm-worker produce`, tests, the benchmark)."""
    if fmt == "json":
        from worker.formats.json import encode_json_event

        return encode_json_event
    if fmt == "avro":
        from worker.formats.avro import avro_event_serializer

        return avro_event_serializer(_needs(registry), topic)
    return lambda x, ts, reset, end: encode_event(x, ts=ts, reset=reset, end=end)


def prediction_decoder(fmt: Format, topic: str, registry: SchemaRegistryClient | None = None) -> PredictionDecoding:
    """One prediction's value (downstream: `lstm-worker verify`, tests, the benchmark)."""
    if fmt == "json":
        from worker.formats.json import decode_json_prediction

        return decode_json_prediction
    if fmt == "avro":
        from worker.formats.avro import avro_prediction_deserializer

        return avro_prediction_deserializer(_needs(registry), topic)
    return decode_prediction
