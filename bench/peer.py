"""The Quix Streams peer: what a user would write instead of the worker, run by the benchmark
(bench/peer_run.py) with the peer venv's python (`make peer`), never imported by the main venv.

One message at a time: a stateful `apply` reads the key's state from Quix's state store
(RocksDB, its default, with its changelog topic), steps it once in NumPy (bench/peer_step.py)
and writes the state back; `to_topic` writes the worker's prediction format. Quix's defaults
otherwise (at-least-once, its commit interval, its consumer and producer settings), except:
- bytes in and out (de)serializers: the events are msgpack, decoded in the apply, and the
  prediction is encoded there too, so no JSON pass of Quix's runs per message;
- the state as raw bytes (`get_bytes`/`set_bytes`), not Quix's JSON of a list of floats;
- `auto_offset_reset` earliest, as the worker: a pre-loaded topic is read from its start;
- the producer's partitioner librdkafka's `consistent_random` (CRC32 of the key, the
  benchmark's partitioner) instead of Quix's murmur2: each prediction goes to its event's
  partition number, as the worker writes it;
- one NumPy/BLAS thread, as the worker is served (`OPENBLAS_NUM_THREADS=1` from the benchmark).
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Sequence
from typing import Any

from quixstreams import Application, message_context
from quixstreams.state import State

from bench.peer_step import PeerModel, PredictionEncoder, decode_event

STATE = "lstm"  # the state store's key of a key's state: int64 step, then float32 h and c per layer
_STEP = struct.Struct("<q")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--input-topic", required=True)
    p.add_argument("--output-topic", required=True)
    p.add_argument("--group-id", required=True)
    p.add_argument("--weights", required=True, help="the model as bench/peer_step.py's .npz")
    p.add_argument("--state-dir", required=True, help="Quix's RocksDB state directory")
    return p


def step_function(model: PeerModel) -> Any:
    """The apply's callback: one event in (value, key, record timestamp), its prediction out."""
    import numpy as np

    encoder = PredictionEncoder(1, model.fingerprint)
    zero = _STEP.pack(0) + model.zero_state().tobytes()

    def step(value: bytes, _key: bytes, timestamp: int, _headers: Any, state: State) -> bytes:
        x, ts, reset, end = decode_event(value, timestamp)
        stored = zero if reset else state.get_bytes(STATE, zero)
        count = _STEP.unpack_from(stored)[0] + 1
        y, new = model.step(x, np.frombuffer(stored, np.float32, offset=8))
        if end:
            state.delete(STATE)
        else:
            state.set_bytes(STATE, _STEP.pack(count) + new.tobytes())
        ctx = message_context()
        return encoder.encode(y, ts, ctx.partition, ctx.offset, count)

    return step


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    app = Application(
        broker_address=args.bootstrap_servers,
        consumer_group=args.group_id,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        producer_extra_config={"partitioner": "consistent_random"},
        loglevel="WARNING",
    )
    events = app.topic(args.input_topic, key_deserializer="bytes", value_deserializer="bytes")
    predictions = app.topic(args.output_topic, key_serializer="bytes", value_serializer="bytes")
    sdf = app.dataframe(events)
    sdf = sdf.apply(step_function(PeerModel.load(args.weights)), stateful=True, metadata=True)
    sdf.to_topic(predictions)
    app.run()


if __name__ == "__main__":
    main()
