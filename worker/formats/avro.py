"""Avro values in the Schema Registry framing: magic byte 0, a 4-byte schema id, the Avro body.

Events are read with any writer schema that resolves to EVENT_SCHEMA; predictions are written
with PREDICTION_SCHEMA, registered under `<output-topic>-value`. The registry client is
confluent-kafka's (schemas by id, cached). Events of EVENT_SCHEMA itself and the predictions
go by their fixed layout (worker.formats.avro_fixed); every other body is fastavro's, straight
from the value's bytes, as confluent's AvroDeserializer costs several times more per record
(docs/performance.md, "Avro"). Producers and readers use confluent's AvroSerializer and
AvroDeserializer as they are.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import numpy as np
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_reader

from worker.codec import DecodedEvents, Prediction
from worker.errors import CodecError, RegistryError
from worker.formats import EventEncoding, PredictionDecoding, RecordTimestamps
from worker.formats.avro_fixed import HEADER, FixedEvents, read_fixed, write_predictions

log = logging.getLogger(__name__)
NAMESPACE = "lstm_worker"
EVENT_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Event",
    "namespace": NAMESPACE,
    "fields": [
        {"name": "x", "type": {"type": "array", "items": "float"}},
        {"name": "ts", "type": ["null", "long"], "default": None},
        {"name": "reset", "type": "boolean", "default": False},
        {"name": "end", "type": "boolean", "default": False},
    ],
}
PREDICTION_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Prediction",
    "namespace": NAMESPACE,
    "fields": [
        {"name": "y", "type": {"type": "array", "items": "float"}},
        {"name": "ts", "type": "long"},
        {
            "name": "src",
            "type": {
                "type": "record",
                "name": "Source",
                "fields": [{"name": "partition", "type": "int"}, {"name": "offset", "type": "long"}],
            },
        },
        {"name": "step", "type": "long"},
        {"name": "model", "type": "string"},
    ],
}
# how long a registry that does not answer (not one that says no) is waited for before the worker
# stops, without committing past the records it could not read
REGISTRY_WAIT_S = 60.0


def value_subject(topic: str) -> str:
    """The subject of a topic's values (the registry's TopicNameStrategy)."""
    return f"{topic}-value"


def framing(schema_id: int) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big")


class _WriterSchemas:
    """Writer schemas by the 4 bytes of their id: parsed once, then shared by every record."""

    def __init__(self, registry: SchemaRegistryClient) -> None:
        self.registry = registry
        self._parsed: dict[bytes, Any] = {}
        self._reader = parse_schema(EVENT_SCHEMA)

    def __call__(self, id_bytes: bytes) -> tuple[Any, Any]:
        """(writer, reader) for fastavro: reader None when the writer is the reader schema itself."""
        found = self._parsed.get(id_bytes)
        if found is None:
            found = self._parsed[id_bytes] = self._fetch(int.from_bytes(id_bytes, "big"))
        return found

    def _fetch(self, schema_id: int) -> tuple[Any, Any]:
        schema = self._lookup(schema_id)
        if (schema.schema_type or "AVRO") != "AVRO":
            raise CodecError("schema", f"schema id {schema_id} is a {schema.schema_type} schema, not Avro")
        try:
            parsed = parse_schema(json.loads(schema.schema_str or ""))
        except Exception as exc:  # fastavro and json raise many types for a bad schema
            raise CodecError("schema", f"schema id {schema_id} is not a usable Avro schema: {exc}") from exc
        if parsed == self._reader:
            return parsed, None
        return parsed, self._reader

    def is_reader(self, id_bytes: bytes) -> bool:
        """The id is of the reader schema itself (False for one the registry does not have)."""
        try:
            return self(id_bytes)[1] is None
        except CodecError:
            return False

    def _lookup(self, schema_id: int) -> Schema:
        """The registry's schema; a registry that does not answer is waited for (REGISTRY_WAIT_S)."""
        started, pause = time.monotonic(), 0.2
        while True:
            try:
                return self.registry.get_schema(schema_id)
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    raise CodecError("schema", f"schema id {schema_id} is not in the registry") from exc
                if exc.http_status_code < 500:
                    raise RegistryError(f"the schema registry refused to give schema id {schema_id}: {exc}") from exc
                problem: Exception = exc
            except Exception as exc:  # the HTTP client's transport errors: refused, reset, timed out
                problem = exc
            if time.monotonic() - started > REGISTRY_WAIT_S:
                raise RegistryError(
                    f"the schema registry did not answer for {REGISTRY_WAIT_S:.0f} s ({problem}); the worker stops "
                    "without committing past the records it could not read: check the registry and restart"
                )
            log.warning("schema registry: schema id %d not fetched (%s), retrying", schema_id, problem)
            time.sleep(pause)
            pause = min(2 * pause, 5.0)


class AvroEventDecoder:
    def __init__(self, registry: SchemaRegistryClient, features: int, max_bytes: int) -> None:
        self.features = features
        self.max_bytes = max_bytes
        self._schemas = _WriterSchemas(registry)

    def _refusal(self, value: bytes | None) -> CodecError | None:
        """Why a value cannot be a framed Avro event before its body is read, if it cannot."""
        if value is None:
            return CodecError("decode", "value is empty (null)")
        if len(value) > self.max_bytes:
            return CodecError("too_large", f"value has {len(value)} bytes, the limit is {self.max_bytes}")
        if len(value) <= HEADER or value[0] != 0:
            return CodecError("framing", "not in the Schema Registry framing (magic byte 0, 4-byte schema id, body)")
        return None

    def decode(self, values: list[bytes | None], record_ts: RecordTimestamps) -> DecodedEvents:
        """Values of the reader schema's own fixed layout by a few NumPy calls (worker.formats.
        avro_fixed); every other body straight from the value's bytes by fastavro, in one loop with
        no call of ours per record but the schema's (cached by id)."""
        n, features, schemas = len(values), self.features, self._schemas
        fixed_at, fixed = self._fixed(values)
        left = np.ones(n, bool)
        left[fixed_at] = False
        rejected: list[tuple[int, CodecError]] = []
        good: list[int] = []
        rows: list[list[float]] = []
        stamps: list[int | None] = []
        flags: list[tuple[bool, bool]] = []
        for i in np.flatnonzero(left).tolist():
            value = values[i]
            refusal = self._refusal(value)
            if refusal is not None:
                rejected.append((i, refusal))
                continue
            assert value is not None  # refused above
            body = io.BytesIO(value)
            body.seek(HEADER)
            try:
                writer, reader = schemas(value[1:HEADER])
                record: Any = schemaless_reader(body, writer, reader)
            except CodecError as exc:
                rejected.append((i, exc))
                continue
            except Exception as exc:  # fastavro raises EOFError, ValueError, SchemaResolutionError, ...
                reason = "schema" if type(exc).__name__ == "SchemaResolutionError" else "decode"
                rejected.append((i, CodecError(reason, f"the Avro body does not decode: {type(exc).__name__}: {exc}")))
                continue
            x = record["x"]
            if body.tell() != len(value):
                rejected.append((i, CodecError("decode", f"{len(value) - body.tell()} bytes after the Avro record")))
            elif len(x) != features:
                rejected.append((i, CodecError("shape", f"x has {len(x)} numbers, expected {features}")))
            else:
                good.append(i)
                rows.append(x)
                stamps.append(record["ts"])
                flags.append((record["reset"], record["end"]))
        return self._columns(n, good, rows, stamps, flags, rejected, record_ts, fixed_at, fixed)

    def _fixed(self, values: list[bytes | None]) -> tuple[np.ndarray, FixedEvents]:
        """The values of the reader schema read by their fixed layout: their indexes, their columns."""
        framed = [(i, value) for i, value in enumerate(values) if value is not None and self._refusal(value) is None]
        ids = {value[1:HEADER] for _, value in framed}
        readers = {id_bytes for id_bytes in ids if self._schemas.is_reader(id_bytes)}  # once per id and poll
        if readers != ids:
            framed = [(i, value) for i, value in framed if value[1:HEADER] in readers]
        at = [i for i, _ in framed]
        fixed = read_fixed([value for _, value in framed], self.features)
        return np.array(at, np.int64)[fixed.ok], fixed.select(fixed.ok)

    def _columns(
        self,
        n: int,
        good: list[int],
        rows: list[list[float]],
        stamps: list[int | None],
        flags: list[tuple[bool, bool]],
        rejected: list[tuple[int, CodecError]],
        record_ts: RecordTimestamps,
        fixed_at: np.ndarray,
        fixed: FixedEvents,
    ) -> DecodedEvents:
        x = np.zeros((n, self.features), dtype=np.float32)
        ts = np.zeros(n, dtype=np.int64)
        reset, end, ok = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        x[fixed_at], ts[fixed_at], reset[fixed_at], end[fixed_at] = fixed.x, fixed.ts, fixed.reset, fixed.end
        untimed = fixed_at[~fixed.timed].tolist() + [good[j] for j, stamp in enumerate(stamps) if stamp is None]
        if good:
            with np.errstate(over="ignore"):  # a double beyond float32's range is infinite, refused below
                x[good] = np.array(rows, dtype=np.float32)
            ts[good] = [0 if stamp is None else stamp for stamp in stamps]
            reset[good], end[good] = np.array(flags, dtype=bool).T
        if untimed:  # the record's own timestamp
            ts[untimed] = record_ts(untimed)
        ok[fixed_at] = ok[good] = True
        decoded = np.flatnonzero(ok)
        infinite = decoded[~np.isfinite(x[decoded]).all(axis=1)]
        if len(infinite):
            ok[infinite] = False
            rejected += [(i, CodecError("non_finite", "x holds NaN or infinity")) for i in infinite.tolist()]
            rejected.sort(key=lambda item: item[0])
        return DecodedEvents(ok, x, ts, reset, end, rejected)


class AvroPredictionEncoder:
    """A round's predictions laid out together by their fixed schema (worker.formats.avro_fixed),
    the bytes fastavro writes for each."""

    def __init__(self, registry: SchemaRegistryClient, topic: str, model: str) -> None:
        self.model = model.encode()
        self._framing = framing(register(registry, value_subject(topic), PREDICTION_SCHEMA))

    def encode(
        self, y: np.ndarray, ts: np.ndarray, partition: np.ndarray, offset: np.ndarray, step: np.ndarray
    ) -> list[bytes]:
        return write_predictions(self._framing, y, (ts, partition, offset, step), self.model)


def register(registry: SchemaRegistryClient, subject: str, schema: dict[str, Any]) -> int:
    """The schema's id under `subject`, registered if new; a refusal (an incompatible schema under
    the subject, no permission) is a RegistryError that says what to do."""
    try:
        return int(registry.register_schema(subject, Schema(json.dumps(schema), "AVRO")))
    except SchemaRegistryError as exc:
        if exc.http_status_code == 409:
            raise RegistryError(
                f"the schema registry refused {schema['name']} under subject {subject!r} as incompatible with the "
                f"schemas there ({exc}): delete the subject or relax its compatibility, or use another topic"
            ) from exc
        raise RegistryError(
            f"the schema registry refused to register {schema['name']} under {subject!r}: {exc}"
        ) from exc


def avro_event_serializer(registry: SchemaRegistryClient, topic: str) -> EventEncoding:
    serialize = AvroSerializer(registry, json.dumps(EVENT_SCHEMA))
    context = SerializationContext(topic, MessageField.VALUE)

    def encode(x: np.ndarray | list[float], ts: int | None, reset: bool, end: bool) -> bytes:
        event = {"x": np.asarray(x, dtype=np.float32).tolist(), "ts": ts, "reset": reset, "end": end}
        return serialize(event, context)

    return encode


def avro_prediction_deserializer(registry: SchemaRegistryClient, topic: str) -> PredictionDecoding:
    deserialize = AvroDeserializer(registry, json.dumps(PREDICTION_SCHEMA))
    context = SerializationContext(topic, MessageField.VALUE)

    def decode(value: bytes | None) -> Prediction:
        try:
            p = deserialize(value, context)
        except Exception as exc:  # the deserializer's own and fastavro's errors
            raise CodecError("decode", f"not an Avro prediction: {type(exc).__name__}: {exc}") from exc
        if p is None:
            raise CodecError("decode", "value is empty (null)")
        return Prediction(p["y"], p["src"]["partition"], p["src"]["offset"], p["step"], p["ts"], p["model"])

    return decode
