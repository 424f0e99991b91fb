"""The benchmark's arithmetic and its baselines: the source post's four approaches and the
per-event twin step must all give the full-history outputs (the source post's own check)."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient

from bench.drain import DrainInput, Registry
from bench.kafka_io import encoded_events
from bench.kernel import baselines, flops_per_event, product_operands, products_seconds, time_near_drain
from bench.latency import event_encoder, lower_priority
from bench.scrape import parse_nice
from worker.cli import build_parser as worker_parser
from worker.codec import EventDecoder, encode_event
from worker.formats import event_decoder
from worker.formats import event_encoder as format_encoder
from worker.model.reference import make_reference_model
from worker.options import Format
from worker.synthetic import Produced


def test_flops_per_event_of_the_reference_model():
    assert flops_per_event() == 563_600  # 2 x (4 x 100 x 104 + 4 x 200 x 300 + 200)


def test_the_products_row_takes_the_steps_products_at_their_shapes():
    """Every product the fused step takes per round (4 gates of each LSTM layer, the Dense head),
    so that the kernel's share of their rate counts only the element-wise part and the copies."""
    operands = product_operands(32)
    assert [(a.shape, b.shape, out.shape) for a, b, out in operands] == [
        ((32, 104), (104, 400), (32, 400)),
        ((32, 300), (300, 800), (32, 800)),
        ((32, 200), (200, 1), (32, 1)),
    ]
    assert sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b, _ in operands) == 32 * flops_per_event()
    assert products_seconds(32, min_seconds=0.01) > 0


def test_every_baseline_equals_the_full_history():
    model = make_reference_model(features=4, units=(8, 4), seed=2)
    timings = baselines(model, events=6)  # raises when an approach differs by more than 1e-5
    assert [t.events for t in timings] == [6] * 6
    assert all(t.seconds > 0 for t in timings)
    assert "classic" in timings[0].name and "one compiled step" in timings[-1].name
    assert "one NumPy step" in timings[-2].name


def test_near_drain_times_the_drains_mean_round_size_and_the_per_event_step():
    near = time_near_drain(round_keys=37.6, backend="numpy", min_seconds=0.01, events=5)
    assert near.round_keys == 38 and near.kernel_per_s > 0
    assert near.single_step.events == 5 and "one compiled step" in near.single_step.name


def test_load_generator_sends_what_encode_event_gives_and_the_worker_decodes():
    x = np.array([[0.5, -1.25, 3.0, 1e-3], [2.0, 0.0, -0.0, 7.5]], dtype=np.float32)
    encode, decoder = event_encoder(), EventDecoder(4, 1 << 20)
    values = [encode(row.tobytes(), 1_795_000_000_000 + i) for i, row in enumerate(x)]
    assert values == [encode_event(row, ts=1_795_000_000_000 + i) for i, row in enumerate(x)]
    decoded = decoder.decode(values, lambda indexes: np.zeros(len(indexes), np.int64))
    assert decoded.ok.all() and decoded.ts.tolist() == [1_795_000_000_000, 1_795_000_000_001]
    np.testing.assert_array_equal(decoded.x, x)


def test_the_drain_events_are_the_same_in_every_format():
    """msgpack and JSON (no registry in these tests); the Avro encoder is `lstm-worker produce`'s,
    which tests/integration/test_formats.py checks against a real registry."""
    decoded = {}
    for fmt in ("msgpack", "json"):
        order, values = encoded_events(300, 7, format_encoder(fmt, "bench-drain"), seed=0)
        events = event_decoder(fmt, 4, 1 << 20).decode(values, lambda ix: np.zeros(len(ix), np.int64))
        assert events.ok.all() and not events.reset.any() and not events.end.any()
        decoded[fmt] = order, events.x
    (order, x), *others = decoded.values()
    assert sorted(set(order)) == list(range(7)) and x.std() > 0.5
    for other_order, other_x in others:
        assert other_order == order
        np.testing.assert_array_equal(other_x, x)
    _, again = encoded_events(300, 7, format_encoder("msgpack", "t"), seed=0)
    assert again == encoded_events(300, 7, lambda x, ts, reset, end: encode_event(x), seed=0)[1]  # as before


@pytest.mark.parametrize("fmt", ["msgpack", "json", "avro"])
def test_each_drain_runs_its_worker_with_its_format_in_and_out(fmt: Format):
    url = "http://127.0.0.1:8182/apis/ccompat/v7"
    registry = Registry(url, SchemaRegistryClient({"url": url})) if fmt == "avro" else None  # asks nothing yet
    data = DrainInput("bench-drain", 10, 2, 1, Produced(10, 1.0), fmt, registry)
    required = ["run", "--model", "m.keras", "--input-topic", "i", "--output-topic", "o"]
    args = worker_parser().parse_args([*required, *data.worker_args()])
    assert (args.input_format, args.output_format or args.input_format) == (fmt, fmt)
    assert args.schema_registry_url == (url if fmt == "avro" else None)


def _thread_nices() -> dict[int, tuple[str, int]]:
    """tid -> (name, nice) of this process's threads."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        out[int(task.name)] = (stat[stat.index("(") + 1 : stat.rindex(")")], parse_nice(stat))
    return out


def test_the_load_generator_and_its_librdkafka_threads_run_at_the_lower_priority_alone():
    main = os.getpriority(os.PRIO_PROCESS, 0)
    before = set(_thread_nices())

    def start_producer() -> tuple[int, Producer]:  # no broker needed: librdkafka starts its threads at once
        return lower_priority(main + 3), Producer({"bootstrap.servers": "127.0.0.1:9", "client.id": "nice-test"})

    with ThreadPoolExecutor(max_workers=1) as pool:
        ran_at, producer = pool.submit(start_producer).result()
        new = {tid: v for tid, v in _thread_nices().items() if tid not in before}
    assert ran_at == main + 3
    librdkafka = [nice for name, nice in new.values() if name.startswith("rdk:")]
    assert len(librdkafka) >= 2 and set(librdkafka) == {main + 3}  # inherited from the thread that made them
    assert os.getpriority(os.PRIO_PROCESS, 0) == main  # the main thread (which starts the workers) is untouched
    assert _thread_nices()[threading.get_native_id()][1] == main
    del producer
