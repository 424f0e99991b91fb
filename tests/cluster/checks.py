"""What a fault did to a run: lost, doubled or wrong predictions (worker.verify), states that do
not carry their key's last event, how long the group took to get past what was there when the
fault began; and the rows of the fault report (LSTM_FAULT_REPORT)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.integration.kafka_io import read_all
from worker.codec import CodecError, decode_event
from worker.config import KafkaConfig
from worker.verify import verify

REPO = Path(__file__).resolve().parents[2]
GUARANTEES = ("at_least_once", "exactly_once_v2")
SESSION_ROWS: list[dict[str, Any]] = []  # this session's record_row rows, for the terminal summary


_ADMINS: dict[tuple[str, tuple[tuple[str, str], ...]], AdminClient] = {}


def _admin(kafka: KafkaConfig) -> AdminClient:
    """One admin client per cluster for the session (Recovery asks several times a second)."""
    key = (kafka.bootstrap_servers, tuple(kafka.overrides))
    if key not in _ADMINS:
        _ADMINS[key] = AdminClient(kafka.admin())
    return _ADMINS[key]


def forget_admins() -> None:
    """Destroy the admin clients (before the cluster stops: else they keep reconnecting)."""
    _ADMINS.clear()


def _partitions(kafka: KafkaConfig, topic: str) -> int:
    metadata = _admin(kafka).list_topics(topic, timeout=30)
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        raise AssertionError(f"topic {topic!r}: {info.error if info else 'missing'}")
    return len(info.partitions)


def _read(kafka: KafkaConfig, topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every committed record of the topic as of now (read_committed, librdkafka's default):
    (partition, offset, key, value), in partition and offset order."""
    return [(r.partition, r.offset, r.key, r.value) for r in read_all(kafka, topic, timeout=120)]


def _features(model_path: str) -> int:
    from worker.model.loader import load_model

    return int(load_model(model_path).input_shape[-1])


def last_events(kafka: KafkaConfig, topic: str, features: int) -> dict[tuple[int, bytes], tuple[int, bool]]:
    """(partition, key) -> (offset, end) of the key's last valid event."""
    last: dict[tuple[int, bytes], tuple[int, bool]] = {}
    for p, offset, key, value in _read(kafka, topic):
        if key is None:
            continue
        try:
            event = decode_event(value, features=features, partition=p, offset=offset, record_ts=0, max_bytes=1 << 30)
        except CodecError:
            continue  # a dead letter: the key's state stays that of its event before
        last[(p, key)] = (offset, event.end)
    return last


def latest_states(kafka: KafkaConfig, topic: str) -> dict[tuple[int, bytes], tuple[int, int] | None]:
    """(partition, key) -> src (partition, offset) of the key's latest state record, None for a
    tombstone. Only the header is decoded: the state tensors do not matter here."""
    latest: dict[tuple[int, bytes], tuple[int, int] | None] = {}
    for p, _offset, key, value in _read(kafka, topic):
        if key is None:
            continue
        if value is None:
            latest[(p, key)] = None
            continue
        src = msgpack.unpackb(value, raw=False).get("src")
        latest[(p, key)] = (int(src[0]), int(src[1])) if isinstance(src, list) and len(src) == 2 else (-1, -1)
    return latest


def state_mismatches(
    kafka: KafkaConfig, input_topic: str, state_topic: str, features: int
) -> tuple[int, int, list[str]]:
    """(keys, mismatched keys, a few examples): a key mismatches when its latest state record
    does not carry src == (partition, offset of its last event). A tombstone or no record is
    right only after an `end` event (its zero state is deleted once committed)."""
    events = last_events(kafka, input_topic, features)
    states = latest_states(kafka, state_topic)
    bad: list[str] = []
    for (p, key), (offset, end) in events.items():
        state = states.get((p, key))
        if state == (p, offset) or (end and state is None):
            continue
        bad.append(f"{key!r}@{p}: last event {offset}{' (end)' if end else ''}, state src {state}")
    return len(events), len(bad), bad[:5]


def group_lag(kafka: KafkaConfig, topic: str, group_id: str) -> int:
    """Records of the topic past the group's committed offsets (all, where it committed none)."""
    ends = high_watermarks(kafka, topic)
    committed = committed_offsets(kafka, topic, group_id, list(ends))
    return sum(max(0, high - max(committed.get(p, 0), 0)) for p, high in ends.items())


def high_watermarks(kafka: KafkaConfig, topic: str) -> dict[int, int]:
    consumer = Consumer(kafka.consumer("lstm-fault-check"))
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(_partitions(kafka, topic))
        }
    finally:
        consumer.close()


def committed_offsets(kafka: KafkaConfig, topic: str, group_id: str, partitions: list[int]) -> dict[int, int]:
    """partition -> the group's committed offset (negative: none)."""
    admin = _admin(kafka)
    request = ConsumerGroupTopicPartitions(group_id, [TopicPartition(topic, p) for p in partitions])
    result = admin.list_consumer_group_offsets([request], request_timeout=10)[group_id].result()
    return {tp.partition: tp.offset for tp in result.topic_partitions}


@dataclass
class FaultOutcome:
    events: int
    missing: int  # lost: events without a prediction
    duplicates: int  # doubled: predictions beyond one per event
    wrong: int  # predictions off the full-history model
    unexpected: int  # predictions of no event
    max_abs_diff: float
    state_keys: int
    state_mismatches: int
    state_examples: list[str]
    lag: int  # input records past the group's committed offsets when checked

    def assert_exact(self, guarantee: str) -> None:
        """Nothing lost or wrong, every key's state from its last event; exactly once, nothing
        doubled either."""
        if guarantee not in GUARANTEES:
            raise ValueError(f"guarantee {guarantee!r}: expected one of {GUARANTEES}")
        problems = []
        if self.events == 0:
            problems.append("no events")
        for name in ("missing", "wrong", "unexpected", "state_mismatches"):
            if getattr(self, name):
                problems.append(f"{name}={getattr(self, name)}")
        if guarantee == "exactly_once_v2" and self.duplicates:
            problems.append(f"duplicates={self.duplicates}")
        assert not problems, f"{guarantee}: {', '.join(problems)} ({self})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_outcome(
    kafka: KafkaConfig,
    topics: Any,
    model_path: str | Path,
    guarantee: str,
    group_id: str,
    *,
    tolerance: float = 1e-5,
    timeout_s: float = 20.0,
) -> FaultOutcome:
    """`topics`: tests.integration.conftest.Topics (input, output, state). Call it once the
    group has committed past every event (`Recovery.wait_recovered`): the states are checked
    as they stand."""
    if guarantee not in GUARANTEES:
        raise ValueError(f"guarantee {guarantee!r}: expected one of {GUARANTEES}")
    report = verify(
        kafka,
        model_path=str(model_path),
        input_topic=topics.input,
        output_topic=topics.output,
        tolerance=tolerance,
        timeout_s=timeout_s,
    )
    keys, mismatched, examples = state_mismatches(kafka, topics.input, topics.state, _features(str(model_path)))
    return FaultOutcome(
        events=report.events,
        missing=report.missing,
        duplicates=report.duplicates,
        wrong=report.wrong,
        unexpected=report.unexpected,
        max_abs_diff=report.max_abs_diff,
        state_keys=keys,
        state_mismatches=mismatched,
        state_examples=examples,
        lag=group_lag(kafka, topics.input, group_id),
    )


class Recovery:
    """Made when a fault starts: the input's high watermarks then. `wait_recovered` waits until
    the group has committed past them all."""

    def __init__(self, kafka: KafkaConfig, input_topic: str, group_id: str) -> None:
        self.started = time.monotonic()
        self.kafka = kafka
        self.topic = input_topic
        self.group_id = group_id
        self.targets = high_watermarks(kafka, input_topic)

    def behind(self) -> dict[int, tuple[int, int]]:
        """partition -> (committed, target) of the partitions not yet past their target."""
        committed = committed_offsets(self.kafka, self.topic, self.group_id, list(self.targets))
        return {
            p: (committed.get(p, -1), target) for p, target in self.targets.items() if committed.get(p, -1) < target
        }

    def wait_recovered(self, timeout: float = 180.0) -> float:
        """Seconds from the fault's start until the group committed past the snapshot."""
        deadline = time.monotonic() + timeout
        last: object = "not asked yet"
        while time.monotonic() < deadline:
            try:
                last = self.behind()
                if not last:
                    return time.monotonic() - self.started
            except KafkaException as exc:  # the coordinator may be the node that is down
                last = exc
            time.sleep(0.25)
        raise AssertionError(f"group {self.group_id} not past {self.targets} after {timeout} s: {last}")


def report_path() -> Path:
    return Path(os.environ.get("LSTM_FAULT_REPORT") or REPO / ".cache/fault-report.jsonl")


def record_row(fault: str, guarantee: str, outcome: FaultOutcome, recovery_s: float | None) -> dict[str, Any]:
    """Append one row to the fault report (a JSON line) and to this session's summary."""
    row = {
        "fault": fault,
        "guarantee": guarantee,
        "events": outcome.events,
        "lost": outcome.missing,
        "doubled": outcome.duplicates,
        "wrong": outcome.wrong,
        "max_abs_diff": outcome.max_abs_diff,
        "state_mismatches": outcome.state_mismatches,
        "recovery_s": None if recovery_s is None else round(recovery_s, 2),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    SESSION_ROWS.append(row)
    return row


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| fault | guarantee | events | lost | doubled | wrong | max difference | recovery s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        recovery = "" if r["recovery_s"] is None else f"{r['recovery_s']:.1f}"
        lines.append(
            f"| {r['fault']} | {r['guarantee']} | {r['events']} | {r['lost']} | {r['doubled']} | {r['wrong']} "
            f"| {r['max_abs_diff']:.3g} | {recovery} |"
        )
    return "\n".join(lines)
