"""Rounds with the step on a thread of its own (`overlap`) give what rounds on the loop's thread give.

What must hold (worker/rounds.py): a round lands before the next one steps, and before it
gathers its states where the two share a key, so a key in two rounds running back to back steps
from the state the first one left; a round's predictions are
produced only once it has landed, right after the next round's step has begun, or by
`collect`/`finish`; nothing is applied twice. No broker and no network: the model is a running
sum and the producer only records what it is given.
"""

import threading
import time

import numpy as np
import pytest

from worker.batching import Batcher, Events
from worker.formats import PredictionEncoder, decode_prediction
from worker.metrics import Metrics, PhaseClock
from worker.rounds import RoundRunner
from worker.state.cache import StateCache
from worker.state.store import StateStore

OUT = "events.predictions"


class RunningSum:
    """State = the sum of every input so far; output = the state after each step."""

    features, state_sizes, state_dim, output_dim = 1, [1], 1, 1

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate  # a step waits for it: the test decides when the step is done

    def step(self, x: np.ndarray, mask: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.gate is not None:
            assert self.gate.wait(10)
        sums = state[:, None, :] + np.cumsum(x * mask[..., None], axis=1)
        return sums, sums[np.arange(len(x)), mask.sum(axis=1) - 1]


class RecordingProducer:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []

    def produce_many(self, topic: str, targets: list[tuple[int, bytes]], values: list[bytes]) -> None:
        self.records.extend((topic, key, value) for (_, key), value in zip(targets, values, strict=True))


def runner(model: RunningSum, overlap: bool) -> RoundRunner:
    metrics = Metrics()
    store = StateStore(StateCache(64, 1), None, [1], "sum", metrics)  # type: ignore[arg-type]  # no state read
    encoder = PredictionEncoder(1, "sum")
    return RoundRunner(model, store, OUT, "events.state", encoder, metrics, PhaseClock(metrics), overlap=overlap)


def events(keys: list[bytes], first_offset: int) -> Events:
    n = len(keys)
    offsets = np.arange(first_offset, first_offset + n, dtype=np.int64)
    return Events(
        [(0, key) for key in keys],
        np.zeros(n, np.int64),
        offsets,
        offsets * 10,
        np.zeros(n, bool),
        np.zeros(n, bool),
        (offsets % 7).astype(np.float32)[:, None],
    )


def predictions(producer: RecordingProducer) -> list[tuple[bytes, int, int, float]]:
    """(key, offset, step, value) of each prediction, in the order produced."""
    out = []
    for _, key, value in producer.records:
        p = decode_prediction(value)
        out.append((key, p.offset, p.step, p.y[0]))
    return out


POLLS = [[b"a", b"b", b"a"], [b"a", b"c"], [b"b", b"a", b"a", b"c"], [b"c"]]


def served(overlap: bool, max_keys: int) -> list[tuple[bytes, int, int, float]]:
    """Every poll's events through rounds of at most `max_keys` keys, each round right after the last."""
    rounds, producer, batcher = runner(RunningSum(), overlap), RecordingProducer(), Batcher(max_keys, 2)
    offset = 0
    for keys in POLLS:
        batcher.add(events(keys, offset))
        offset += len(keys)
        while len(batcher):
            rounds.run(batcher.take(), producer)
    rounds.finish(producer)
    rounds.close()
    return predictions(producer)


@pytest.mark.parametrize("max_keys", [1, 2, 3])
def test_overlapped_rounds_predict_what_rounds_on_the_loop_thread_predict(max_keys):
    expected: dict[bytes, float] = {}
    truth = {}
    offset = 0
    for keys in POLLS:  # each key's running sum at each of its events
        for key in keys:
            expected[key] = expected.get(key, 0.0) + offset % 7
            truth[offset] = (key, expected[key])
            offset += 1
    overlapped, serial = served(True, max_keys), served(False, max_keys)
    assert sorted(overlapped) == sorted(serial)
    assert len(overlapped) == offset  # one prediction per event, none twice
    assert {off: (key, y) for key, off, _, y in overlapped} == truth
    steps: dict[bytes, list[int]] = {}
    for key, _, step, _ in sorted(overlapped, key=lambda p: p[1]):
        steps.setdefault(key, []).append(step)
    assert all(s == list(range(1, len(s) + 1)) for s in steps.values())


def test_a_round_in_flight_is_produced_once_landed_and_never_before():
    gate = threading.Event()
    rounds, producer = runner(RunningSum(gate), overlap=True), RecordingProducer()
    batcher = Batcher(8, 4)
    batcher.add(events([b"a", b"b"], 0))
    rounds.run(batcher.take(), producer)  # returns with the step waiting on the gate
    assert rounds.in_flight
    rounds.collect(producer, wait=False)
    assert producer.records == []  # not done: nothing produced, still in flight
    assert rounds.in_flight
    gate.set()
    rounds.collect(producer, wait=True)
    assert not rounds.in_flight
    assert [(key, off, y) for key, off, _, y in predictions(producer)] == [(b"a", 0, 0.0), (b"b", 1, 1.0)]
    batcher.add(events([b"a"], 2))
    rounds.run(batcher.take(), producer)
    rounds.finish(producer)
    assert predictions(producer)[-1] == (b"a", 2, 2, 2.0)  # from the state the first round left
    rounds.close()


@pytest.mark.parametrize(("keys", "gathered_beside"), [([b"c", b"d"], True), ([b"d", b"a"], False)])
def test_a_round_gathers_its_states_while_the_one_before_steps_only_if_they_share_no_key(keys, gathered_beside):
    gate = threading.Event()
    rounds, producer = runner(RunningSum(gate), overlap=True), RecordingProducer()
    batcher = Batcher(8, 4)
    batcher.add(events([b"a", b"b"], 0))
    rounds.run(batcher.take(), producer)  # in flight until the gate opens
    batcher.add(events(keys, 2))
    second = threading.Thread(target=rounds.run, args=(batcher.take(), producer))
    second.start()  # gathers (or not), then waits for the first round to land
    cache = rounds.store.cache
    for _ in range(100):  # its new key d gets a row when its states are gathered
        if (0, b"d") in cache:
            break
        time.sleep(0.01)
    gathered, produced = (0, b"d") in cache, list(producer.records)
    gate.set()
    assert gathered == gathered_beside
    assert produced == []  # the first round had not landed
    second.join(10)
    rounds.finish(producer)
    rounds.close()
    got = {(key, off): (step, y) for key, off, step, y in predictions(producer)}
    assert got[(b"a", 0)] == (1, 0.0) and got[(b"b", 1)] == (1, 1.0)
    assert got[(keys[0], 2)] == (1, 2.0)
    if gathered_beside:
        assert got[(b"d", 3)] == (1, 3.0)
    else:
        assert got[(b"a", 3)] == (2, 3.0)  # a's second step, from the state the first round left


def test_a_step_that_fails_raises_where_the_round_lands():
    class Broken(RunningSum):
        def step(self, x, mask, state):
            raise RuntimeError("the step failed")

    rounds, producer, batcher = runner(Broken(), overlap=True), RecordingProducer(), Batcher(8, 4)
    batcher.add(events([b"a"], 0))
    rounds.run(batcher.take(), producer)
    with pytest.raises(RuntimeError, match="the step failed"):
        rounds.finish(producer)
    assert producer.records == []
    rounds.close()
