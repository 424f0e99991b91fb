"""Two members of one group, one of them behind a bad network: worker A runs in a network
namespace and reaches the cluster only through Toxiproxy; worker B runs on loopback. Mid-stream
A's link gets latency, then packet loss, then a blackhole longer than the session timeout, so
that the group gives A's partitions to B; then the link heals and A comes back. Nothing may be
lost or wrong, each key's state must carry its last event, and exactly once nothing may be
doubled either (read_committed).

The recovery recorded is from the blackhole's start: the seconds until the group has committed
past every input record there was a second into the blackhole (so past anything A could still
commit as the link was cut): by B once it has taken A's partitions over, or by A after the heal."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient

from tests.cluster.checks import Recovery, check_outcome, record_row
from tests.cluster.cluster import LocalCluster
from tests.cluster.netfault import Namespace, Toxiproxy
from tests.cluster.workers import (  # noqa: F401 (fixtures used here, by name)
    Stream,
    Timed,
    gauge,
    logs,
    netfault_cleaned_up,
    start_ns_worker,
    wait_for,
    warm_group_coordinator,
)
from tests.integration.kafka_io import metric
from worker.kafka.topics import create_topic

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

KEYS, EVENTS, PARTITIONS, RATE = 120, 60, 6, 160  # 7,200 events over 45 s
LATENCY_MS, JITTER_MS, LATENCY_S = 150, 50, 4.0
LOSS_PERCENT, LOSS_S = 20, 4.0
BLACKHOLE_S = 18.0  # the session times out after 10 s without a heartbeat (the worker's session.timeout.ms)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once_v2"])
def test_latency_loss_then_a_blackhole_past_the_session_timeout(
    healthy_cluster: LocalCluster,
    kafka,
    topics,
    model_file,
    start_worker,
    start_ns_worker,  # noqa: F811 (the fixture imported above)
    namespace: Namespace,
    toxiproxy: Toxiproxy,
    guarantee: str,
) -> None:
    model = model_file("lstm", (32, 16))
    group = f"group-{topics.input}"
    create_topic(AdminClient(kafka.admin()), topics.input, PARTITIONS, replication_factor=3)
    warm_group_coordinator(kafka, group, topics.input)  # a new cluster's first group: see there
    args = ("--processing-guarantee", guarantee)
    a = start_ns_worker(model, topics, *args)
    b = start_worker(model, topics, *args)
    both = [a, b]
    for w in both:
        w.wait_ready(timeout=120)

    def assigned(w) -> float | None:
        return gauge(w, "lstm_worker_assigned_partitions")

    wait_for(lambda: assigned(a) == assigned(b) == PARTITIONS / 2, 60, "the partitions split 3/3", both)

    stream = Stream(kafka, topics.input, KEYS, EVENTS, RATE, PARTITIONS)
    stream.start()
    predicted = lambda: sum(gauge(w, "lstm_worker_predictions_total") or 0 for w in both)  # noqa: E731
    wait_for(lambda: predicted() >= 400, 60, "the first predictions", both)
    a_before = gauge(a, "lstm_worker_predictions_total") or 0
    assert a_before > 0, f"A predicted nothing before the faults:{logs(both)}"

    toxiproxy.latency(LATENCY_MS, JITTER_MS)
    time.sleep(LATENCY_S)
    toxiproxy.clear()
    namespace.loss(LOSS_PERCENT)
    time.sleep(LOSS_S)
    namespace.heal()
    a_through = gauge(a, "lstm_worker_predictions_total") or 0

    cut_at = time.monotonic()
    namespace.blackhole()
    # the input's ends a second into the blackhole: past what A may have committed as the link
    # was cut, so that only B's taking A's partitions over (or A back after the heal) commits them
    time.sleep(1.0)
    recovery = Recovery(kafka, topics.input, group)
    recovery.started = cut_at  # timed from the cut
    since_cut = Timed(lambda: recovery.wait_recovered(timeout=150))
    wait_for(
        lambda: assigned(b) == PARTITIONS,
        BLACKHOLE_S - (time.monotonic() - cut_at),  # within the blackhole
        "B to be assigned all 6 partitions during the blackhole",
        both,
    )
    b_took_all = time.monotonic() - cut_at
    time.sleep(max(0.0, BLACKHOLE_S - (time.monotonic() - cut_at)))
    namespace.heal()
    healed_at = time.monotonic()
    since_heal = Timed(lambda: Recovery(kafka, topics.input, group).wait_recovered(timeout=150))

    produced = stream.finish(timeout=120)
    assert produced.records == KEYS * EVENTS
    # A is back: a member again, with partitions, predicting
    wait_for(lambda: (assigned(a) or 0) > 0, 90, "A to be assigned partitions again after the heal", both)
    wait_for(
        lambda: (gauge(a, "lstm_worker_predictions_total") or 0) > a_through,
        60,
        "A to predict again after the heal",
        both,
    )
    recovered_s = since_cut.value(timeout=160)
    after_heal_s = since_heal.value(timeout=160)
    Recovery(kafka, topics.input, group).wait_recovered(timeout=120)  # every event committed

    outcome = check_outcome(kafka, topics, model, guarantee, group, timeout_s=60)
    print(
        f"\n{guarantee}: A predicted {a_before:.0f} before the faults, {a_through:.0f} through latency and loss; "
        f"B took all partitions {b_took_all:.1f} s into the blackhole; recovered {recovered_s:.1f} s after the cut, "
        f"{after_heal_s:.1f} s after the heal (heal at {healed_at - cut_at:.1f} s); {outcome}"
    )
    record_row("network: latency, loss, blackhole", guarantee, outcome, recovered_s)
    try:
        outcome.assert_exact(guarantee)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{logs(both)}") from None

    for w in both:
        assert w.proc.poll() is None, f"{w.log_path.name} exited with {w.proc.returncode}:{logs(both)}"
    aborts = metric(a.get("/metrics")[1], "lstm_worker_transaction_aborts_total")
    print(f"A's transaction aborts: {aborts:.0f}")
    for w in both:
        assert w.stop() == 0, f"{w.log_path.name} did not stop cleanly:{logs(both)}"
