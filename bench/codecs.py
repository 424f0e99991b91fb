"""`python -m bench.codecs`: the value formats' decode and encode costs, and the alternatives
they were chosen over, per value of a poll (docs/performance.md, "JSON" and "Avro").

Each candidate runs once per repeat, in turn (A B C ... A B C ...), and the median per value is
printed with its ratio to the msgpack row of the same run. The Avro rows need a Schema Registry.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from worker.codec import EventDecoder, PredictionEncoder, encode_event
from worker.config import RegistryConfig
from worker.formats import event_decoder, event_encoder, prediction_encoder

FEATURES = 4
Candidate = tuple[str, Callable[[], Any]]


def _orjson_then_python(values: list[bytes]) -> list[tuple[list[float], Any, bool, bool]]:
    """orjson parses to dicts; the checks msgspec makes in C are then Python's, per event."""
    import orjson

    out = []
    for value in values:
        event = orjson.loads(value)
        x = event["x"]
        if not isinstance(event, dict) or set(event) - {"x", "ts", "reset", "end"} or len(x) != FEATURES:
            raise ValueError("not an event")
        if not all(type(v) in (int, float) for v in x):
            raise ValueError("x must hold numbers")
        out.append((x, event.get("ts"), event.get("reset", False) is True, event.get("end", False) is True))
    return out


def _fastavro_reads(values: list[bytes], schema: dict[str, Any]) -> list[Any]:
    """Each body by fastavro's reader, as the worker reads a writer schema other than its own."""
    from fastavro import parse_schema, schemaless_reader

    parsed = parse_schema(schema)
    out = []
    for value in values:
        body = io.BytesIO(value)
        body.seek(5)  # the framing
        out.append(schemaless_reader(body, parsed, None))
    return out


def _fastavro_writes(y: np.ndarray, ints: tuple[np.ndarray, ...], schema: dict[str, Any]) -> list[bytes]:
    """Each prediction by fastavro's writer, a dict per record (the worker's encoder before)."""
    from fastavro import parse_schema, schemaless_writer

    parsed, out = parse_schema(schema), []
    for values, t, p, o, s in zip(y.tolist(), *(column.tolist() for column in ints), strict=True):
        body = io.BytesIO()
        schemaless_writer(
            body, parsed, {"y": values, "ts": t, "src": {"partition": p, "offset": o}, "step": s, "model": "fp"}
        )
        out.append(body.getvalue())
    return out


def candidates(n: int, registry_url: str | None) -> tuple[list[Candidate], list[Candidate]]:
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((n, FEATURES)).astype(np.float32)
    ts = 1_700_000_000_000 + np.arange(n, dtype=np.int64)
    no_ts: Callable[[list[int]], list[int]] = lambda indexes: [0] * len(indexes)  # noqa: E731
    msgpack_values: list[bytes | None] = [encode_event(x, ts=int(t)) for x, t in zip(xs, ts, strict=True)]
    json_encode = event_encoder("json", "bench")
    json_values: list[bytes | None] = [json_encode(x, int(t), False, False) for x, t in zip(xs, ts, strict=True)]
    y = rng.standard_normal((n, 1)).astype(np.float32)
    ints = (ts, np.zeros(n, np.int64), np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64))
    decode: list[Candidate] = [
        ("msgpack (worker)", lambda: EventDecoder(FEATURES, 1 << 20).decode(msgpack_values, no_ts)),
        ("json, msgspec (worker)", lambda: event_decoder("json", FEATURES, 1 << 20).decode(json_values, no_ts)),
        ("json, orjson + checks in Python", lambda: _orjson_then_python(json_values)),  # type: ignore[arg-type]
        ("json, the standard library", lambda: [json.loads(v) for v in json_values]),  # type: ignore[arg-type]
    ]
    encode: list[Candidate] = [
        ("msgpack (worker)", lambda: PredictionEncoder(1, "fp").encode(y, *ints)),
        ("json, msgspec (worker)", lambda: prediction_encoder("json", 1, "fp", "bench").encode(y, *ints)),
    ]
    if registry_url:
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        from worker.formats.avro import EVENT_SCHEMA, PREDICTION_SCHEMA
        from worker.formats.registry import connect_registry

        client = connect_registry(RegistryConfig(registry_url))
        avro_encode = event_encoder("avro", "bench-codecs", client)
        avro_values: list[bytes | None] = [avro_encode(x, int(t), False, False) for x, t in zip(xs, ts, strict=True)]
        deserialize = AvroDeserializer(client, json.dumps(EVENT_SCHEMA))
        context = SerializationContext("bench-codecs", MessageField.VALUE)
        decode += [
            (
                "avro, fixed layout (worker)",
                lambda: event_decoder("avro", FEATURES, 1 << 20, client).decode(avro_values, no_ts),
            ),
            ("avro, fastavro per record", lambda: _fastavro_reads(avro_values, EVENT_SCHEMA)),  # type: ignore[arg-type]
            ("avro, confluent's AvroDeserializer", lambda: [deserialize(v, context) for v in avro_values]),
        ]
        encode += [
            (
                "avro, fixed layout (worker)",
                lambda: prediction_encoder("avro", 1, "fp", "bench-codecs", client).encode(y, *ints),
            ),
            ("avro, fastavro per record", lambda: _fastavro_writes(y, ints, PREDICTION_SCHEMA)),
        ]
    return decode, encode


def timed(rows: list[Candidate], repeats: int, n: int) -> dict[str, float]:
    """Median µs per value of each candidate, the candidates interleaved repeat by repeat."""
    seconds: dict[str, list[float]] = {name: [] for name, _ in rows}
    for _ in range(repeats):
        for name, run in rows:
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(times) / n * 1e6 for name, times in seconds.items()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.codecs", description=__doc__)
    p.add_argument("--values", type=int, default=4096, help="values per poll (or per round, to encode)")
    p.add_argument("--repeats", type=int, default=15, help="runs of each candidate, interleaved")
    p.add_argument("--schema-registry-url", help="a Schema Registry, for the Avro rows (e.g. `make registry`)")
    args = p.parse_args(argv)
    decode, encode = candidates(args.values, args.schema_registry_url)
    for title, rows in (("decode a poll's events", decode), ("encode a round's predictions", encode)):
        result = timed(rows, args.repeats, args.values)
        base = result["msgpack (worker)"]
        print(f"\n{title}, {args.values} values, median of {args.repeats}: µs per value, ratio to msgpack")
        for name, us in result.items():
            print(f"  {name:38s} {us:8.2f} µs  {us / base:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
