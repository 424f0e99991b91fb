"""BENCHMARKS.md from one run's results, and nothing else: a section per part, each saying how it
was measured and on what, the ratios of that run, the targets (bench/targets.py) met or missed
(by how much), the plots. Why a figure is what it is belongs in the docs, not here."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bench.check import SAMPLE_KEYS, TOLERANCE
from bench.drain import DrainResult
from bench.latency import LOW_LOAD_SHARE, PRODUCER_LINGER_MS, SUSTAINED_SHARE, LatencyResult
from bench.results import BenchResults, msgpack_rate, targets
from bench.stats import shares
from bench.targets import LATENCY_LOAD_SHARE, PRODUCTS_KEYS
from bench.versus import CATCH_UP_S, VERSUS_KEYS, VERSUS_PARTITIONS


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> list[str]:
    """A markdown table; columns in `right` are right-aligned."""
    align = ["---:" if i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _context(r: BenchResults) -> str:
    return f"Command: `{r.command}`. Date: {r.date}. Machine: {r.machine}; load average at the start: {r.load}."


def _plot(r: BenchResults, name: str, alt: str) -> list[str]:
    return ["", f"![{alt}]({r.plots[name]})"] if name in r.plots else []


def kernel_section(r: BenchResults) -> list[str]:
    k = r.kernel
    lines = [
        "## 1-2. Step kernel and the source post's four approaches",
        "",
        _context(r),
        "",
        "The kernel rows time the streaming twin's batched step (one step of every key of a round)",
        f"per backend; the worker serves with `{k.backend}`. Events/s at a round size is the ceiling",
        f"of a worker whose rounds are that large. Model: 4 -> LSTM 100 -> LSTM 200 -> Dense 1 ({k.flops:,}",
        "FLOPs per event).",
        "",
    ]
    rows: list[tuple[object, ...]] = [
        (b, size, f"{s * 1e6:,.0f}", f"{size / s:,.0f}", f"{size * k.flops / s / 1e9:.1f}") for b, size, s in k.sweep
    ]
    p = k.products_s
    rows.append(
        (
            "matrix products only",
            PRODUCTS_KEYS,
            f"{p * 1e6:,.0f}",
            f"{PRODUCTS_KEYS / p:,.0f}",
            f"{PRODUCTS_KEYS * k.flops / p / 1e9:.1f}",
        )
    )
    lines += table(["backend", "keys per round", "µs per round", "events/s", "GFLOP/s"], rows, right=(1, 2, 3, 4))
    lines += [
        "",
        f"The last row is the same step's matrix products alone (BLAS into kept outputs) at {PRODUCTS_KEYS:,} keys",
        f"per round: the `{k.backend}` kernel runs at {k.vs_products:.0%} of their rate.",
    ]
    lines += _plot(r, "kernel", "kernel events/s per round size and backend, drain marked")
    drain = r.drain.events_per_s if r.drain else float("nan")
    events = k.baselines[0].events if k.baselines else 0
    lines += [
        "",
        f"One key's {events} events, one at a time as the source post's four approaches serve them, then the",
        "twin's step per event; each checked against the full history (1e-5) before its time counts:",
        "",
    ]
    rows = [
        (t.name, f"{t.events_per_s:,.1f}", f"{k.best_events_per_s / t.events_per_s:,.0f}x", _x(drain, t.events_per_s))
        for t in k.baselines
    ]
    lines += table(
        ["approach", "events/s", "kernel's best round vs it", "one worker's end-to-end drain vs it"], rows, (1, 2, 3)
    )
    return lines


def _x(numerator: float, denominator: float) -> str:
    return "-" if numerator != numerator or not denominator else f"{numerator / denominator:,.0f}x"


def drain_section(r: BenchResults) -> list[str]:
    d, p = r.drain, r.drain_input
    if d is None or p is None:
        return []
    kernel = r.kernel_at_drain
    lines = [
        "## 3. End-to-end drain",
        "",
        _context(r),
        "",
        f"{d.events:,} events over {d.keys:,} keys on {d.partitions} partitions, pre-loaded into a fresh input",
        f"topic ({p.per_s:,.0f} events/s produced: raw float32 values, batched producer); then one worker",
        "(`python -m worker run`, default settings) drains it. Events/s from the first to the last",
        "prediction's log-append time; round sizes from `lstm_worker_round_keys`, time shares from",
        "`lstm_worker_busy_seconds_total` between the worker's readiness and its last prediction.",
        "",
        *_broker_warmup_lines(r.broker_warmup),
    ]
    lines += table(["measure", "value"], [*_drain_rows(d), *_yardstick_rows(r), _ratio_row(d, kernel)], (1,))
    lines += _format_lines(r)
    lines += _peer_lines(r)
    lines += _value_lines(r)
    lines += [
        "",
        "Share of the worker loop's time per phase (with `--step-overlap on`, the default, the step runs on",
        "a thread of its own: `step` is the loop's wait for it, the rest of the step overlaps the other phases):",
        "",
    ]
    lines += _phase_table({"one worker": d.busy_s} | ({"two workers": r.scaling.busy_s} if r.scaling else {}))
    lines += _plot(r, "phases", "share of the loop's time per phase")
    return lines


def _drain_rows(d: DrainResult) -> list[tuple[str, str]]:
    return [
        ("events/s (first to last prediction)", f"{d.events_per_s:,.0f}"),
        ("seconds, first to last prediction", f"{d.seconds:.1f}"),
        ("events predicted / predictions / duplicates", f"{d.distinct:,} / {d.predictions:,} / {d.duplicates:,}"),
        ("start to ready (s); ready to all predicted (s, polled at 1 Hz)", f"{d.start_to_ready_s:.1f}; {d.wall_s:.1f}"),
        ("rounds; mean keys per round; mean steps per round", f"{d.rounds:,}; {d.round_keys:.1f}; {d.round_steps:.1f}"),
        ("worker CPU (cores, ready to done)", f"{d.cpu_cores:.2f}"),
        ("whole machine CPU meanwhile (cores: broker, benchmark, others)", f"{d.machine_cores:.2f}"),
        ("the hypervisor's steal meanwhile (cores the VM did not get)", f"{d.steal_cores:.2f}"),
    ]


def _format_lines(r: BenchResults) -> list[str]:
    """The same events drained in each value format, each against the msgpack drains around it."""
    if not r.formats and not r.formats_skipped:
        return []
    runs = r.format_runs
    msgpack, baseline = sum(d.format == "msgpack" for d in runs), msgpack_rate(runs)
    lines = [
        "",
        "Then the same events (keys, values, order, partitions) pre-loaded again as JSON and as Avro",
        "(Schema Registry framing, confluent's `AvroSerializer`), each value encoded before the producer's",
        "clock starts, and each topic drained by a fresh worker with `--input-format` and `--output-format`",
        "of its format, the predictions read back in it; then the msgpack topic drained once more. The",
        f"drains in the order they ran, each against the mean of the run's {msgpack} msgpack drain(s):",
        "",
    ]
    rows = [
        (
            _format_name(d.format, again=d.format in {e.format for e in runs[:i]}),
            f"{d.events_per_s:,.0f}",
            f"{d.events_per_s / baseline:.2f}x" if baseline == baseline else "-",
            f"{d.round_keys:.1f}",
            f"{d.distinct:,} / {d.events:,}",
        )
        for i, d in enumerate(runs)
    ]
    heads = ["format", "events/s", "ratio to the msgpack drains' mean", "mean keys per round", "events predicted"]
    lines += table(heads, rows, (1, 2, 3, 4))
    skipped = [f"The {_format_name(f)} drain did not run: {why}." for f, why in r.formats_skipped.items()]
    return lines + (["", *skipped] if skipped else [])


def _peer_lines(r: BenchResults) -> list[str]:
    """The Quix Streams peer's drain of the same msgpack topic, against the msgpack drains."""
    p = r.peer_drain
    if p is None:
        return ["", f"The Quix Streams peer did not run: {r.peer_skipped}."] if r.peer_skipped else []
    baseline = msgpack_rate(r.format_runs)
    lines = [
        "",
        "Then the msgpack topic drained by the Quix Streams peer (bench/peer.py, its own venv: `make peer`),",
        "a fresh application in a fresh group: one message at a time, each key's state in its RocksDB",
        "state store, one NumPy step per message, the worker's prediction format; its settings in",
        "bench/peer.py. Events/s the same way, from its predictions' log-append times, and its predictions",
        "counted as the worker's are (one per event, by `src`) and a sample of their values checked",
        "against the full history as the worker's are (below):",
        "",
    ]
    rows = [
        ("events/s (first to last prediction)", f"{p.events_per_s:,.0f}"),
        ("events predicted / predictions / duplicates", f"{p.distinct:,} / {p.predictions:,} / {p.duplicates:,}"),
        ("the peer's CPU (cores, start to all committed)", f"{p.cpu_cores:.2f}"),
        ("the msgpack drains' mean / the peer's", f"{baseline / p.events_per_s:.2f}x"),
    ]
    return lines + table(["measure", "the peer"], rows, (1,))


def _value_lines(r: BenchResults) -> list[str]:
    """Per drain of the run, its sampled predictions against the full history (bench/check.py)."""
    runs = r.format_runs
    drains = [(_format_name(d.format, d.format in {e.format for e in runs[:i]}), d.values) for i, d in enumerate(runs)]
    drains += [("the Quix Streams peer", r.peer_drain.values)] if r.peer_drain else []
    drains += [("two workers (section 6)", r.scaling.values)] if r.scaling else []
    rows = [(name, values.summary().replace("|", "\\|")) for name, values in drains if values is not None]
    if not rows:
        return []
    lines = [
        "",
        f"Each drain's predictions of the same {SAMPLE_KEYS} keys (chosen by a seeded rng, every event of each)",
        "checked against the reference model on each prefix of their full histories (worker/verify.py's",
        f"computation, one model call per prefix length), within {TOLERANCE:g}; a wrong or a missing one fails",
        "the drain's part, and its figures do not count:",
        "",
    ]
    return lines + table(["drain", "values"], rows)


def _format_name(fmt: str, again: bool = False) -> str:
    return {"json": "JSON", "avro": "Avro"}.get(fmt, fmt) + (" (again)" if again else "")


def _broker_warmup_lines(w: LatencyResult | None) -> list[str]:
    """What ran before part 3 and why, with its own figures: not counted in any part."""
    if w is None:
        return ["The broker was not warmed up before this part: its first minutes of load count here.", ""]
    q = w.quantiles
    return [
        "Before this part the broker was warmed up, not counted: a worker served",
        f"{w.achieved_per_s:,.0f} events/s for {w.seconds:.0f} s on a throwaway topic (latency meanwhile p50",
        f"{q[50.0]:,.0f} ms, p99 {q[99.0]:,.0f} ms). A broker just started compiles Kafka's hot paths under",
        "its first minutes of load, on the cores the worker needs; a broker in service did that long ago.",
        "",
    ]


def _yardstick_rows(r: BenchResults) -> list[tuple[str, str]]:
    swept = f"{r.swept_kernel_at_drain:,.0f} events/s"
    near = r.near_drain
    if near is None:
        keys = r.drain.round_keys if r.drain else 0
        return [(f"step kernel ({r.kernel.backend}) at {keys:.0f} keys per round (part 1)", swept)]
    part2 = r.kernel.baseline("one compiled step").events_per_s
    return [
        (
            f"step kernel ({r.kernel.backend}) at {near.round_keys} keys per round, timed right after the drain",
            f"{near.kernel_per_s:,.0f} events/s (part 1: {swept})",
        ),
        (
            "one compiled step per event, timed right after the drain",
            f"{near.single_step.events_per_s:,.1f} events/s (part 2: {part2:,.1f})",
        ),
    ]


def _ratio_row(d: DrainResult, kernel: float) -> tuple[str, str]:
    return ("drain / kernel at that round size", f"{d.events_per_s / kernel:.2f}")


def _phase_table(runs: dict[str, dict[str, float]]) -> list[str]:
    phases = sorted({p for busy in runs.values() for p in busy}, key=lambda p: -max(b.get(p, 0) for b in runs.values()))
    cols = {name: shares(busy) for name, busy in runs.items()}
    rows = [
        (phase, *(f"{cols[n].get(phase, 0) * 100:.1f}% ({runs[n].get(phase, 0):.1f} s)" for n in runs))
        for phase in phases
    ]
    return table(["phase", *runs], rows, right=tuple(range(1, len(runs) + 1)))


def latency_section(r: BenchResults) -> list[str]:
    lat = r.latency
    if lat is None:
        return []
    runs = [run for run in (lat, r.latency_low) if run is not None]
    lines = [
        "## 4. Latency under load",
        "",
        _context(r),
        "",
        f"A producer at {lat.target_per_s:,.0f} events/s ({LATENCY_LOAD_SHARE:.0%} of the drain rate above) for",
        f"{lat.seconds:.0f} s into a fresh topic, then again at {LOW_LOAD_SHARE:.0%} into another, each with a fresh",
        "worker ready before the first event, its default settings"
        f"{', on the broker warmed up before part 3' if r.broker_warmup else ''}.",
        "Latency = the prediction's log-append time - the event's `ts` (set when handed to the producer,",
        f"`linger.ms` {PRODUCER_LINGER_MS}). The events of the first",
        f"{lat.warmup_s:g} s warm the worker up: they are shown apart and not counted in the quantiles.",
        "",
    ]

    def row(what: str, value: Callable[[LatencyResult], str]) -> tuple[str, ...]:
        return (what, *(value(run) for run in runs))

    def quantile(q: float) -> Callable[[LatencyResult], str]:
        return lambda run: f"{run.quantiles[q]:.1f}"

    rows = [
        row("achieved rate (events/s)", lambda run: f"{run.achieved_per_s:,.0f}"),
        row("worker's rate, first to last prediction (events/s)", lambda run: f"{run.served_per_s:,.0f}"),
        row("the hypervisor's steal while producing (share of CPU time)", lambda run: f"{run.steal_share:.1%}"),
        row("the load generator's nice value", lambda run: str(run.generator_nice)),
        row("events / predicted (warm-up included)", lambda run: f"{run.sent:,} / {run.distinct:,}"),
        row("events counted (after the warm-up)", lambda run: f"{run.latency_ms.size:,}"),
        row("p50 (ms)", quantile(50.0)),
        row("p99 (ms)", quantile(99.0)),
        row("p99.9 (ms)", quantile(99.9)),
        row("max (ms)", lambda run: f"{float(run.latency_ms.max()) if run.latency_ms.size else float('nan'):.1f}"),
        row(
            f"warm-up, first {lat.warmup_s:g} s: p50 / p99 (ms)",
            lambda run: f"{run.warmup_quantiles[50.0]:.1f} / {run.warmup_quantiles[99.0]:.1f}",
        ),
    ]
    heads = ["measure", *(f"{share:.0%} load" for share in (LATENCY_LOAD_SHARE, LOW_LOAD_SHARE)[: len(runs)])]
    right = tuple(range(1, len(runs) + 1))
    alt = f"latency distribution at {LATENCY_LOAD_SHARE:.0%} load"
    return lines + table(heads, rows, right) + _plot(r, "latency", alt)


def versus_section(r: BenchResults) -> list[str]:
    """The worker and the peer on the same paced stream, at each rate, side by side."""
    if not r.versus:
        return []
    first = r.versus[0].worker
    lines = [
        "## 4b. Latency: the worker against the Quix Streams peer",
        "",
        _context(r),
        "",
        f"The same paced stream ({VERSUS_KEYS:,} keys, {VERSUS_PARTITIONS} partitions, keys at random) served",
        "by a fresh worker (default settings), then by a fresh peer (section 3), at each rate, each for",
        f"{first.seconds:.0f} s into a fresh topic, the first {first.warmup_s:g} s not counted; latency as above.",
        f"A server that has not served every event {CATCH_UP_S:g} s after the producer's end, or served",
        f"under {SUSTAINED_SHARE:.0%} of the rate sent, did not sustain the rate and has no latency there.",
        "",
    ]

    def cell(run: LatencyResult, q: float) -> str:
        return f"{run.quantiles[q]:.1f}" if run.sustained else "not sustained"

    rows = [
        (
            f"{v.rate:,.0f}",
            who,
            f"{run.achieved_per_s:,.0f}",
            f"{run.served_per_s:,.0f}",
            f"{run.distinct:,} / {run.sent:,}",
            cell(run, 50.0),
            cell(run, 99.0),
        )
        for v in r.versus
        for who, run in (("worker", v.worker), ("peer", v.peer))
    ]
    heads = [
        "offered (events/s)",
        "server",
        "sent (events/s)",
        "served (events/s)",
        "predicted",
        "p50 (ms)",
        "p99 (ms)",
    ]
    return lines + table(heads, rows, (0, 2, 3, 4, 5, 6))


def state_section(r: BenchResults) -> list[str]:
    s = r.state
    if s is None:
        return []
    lines = [
        "## 5. State: restore, memory per key, cold misses",
        "",
        _context(r),
        "",
        f"{s.keys:,} state records of the reference model (600 float32: h, c of 100 and 200) written to a",
        f"{s.partitions}-partition state topic ({s.written.per_s:,.0f} records/s), then a worker with",
        f"`--cache-keys {s.keys}` started on its input topic: start to `/readyz` 200, the worker's restore",
        "counters, its RSS with every key resident against an idle worker with the same settings and no",
        f"key. Then a worker with `--cache-keys {s.cold_cache_keys}` served {s.cold_events:,} events, one per key, the",
        f"keys spread over all {s.keys:,} (misses are read back from the state topic by offset).",
        "",
    ]
    rows = [
        ("start to ready (s)", f"{s.start_to_ready_s:.1f}"),
        ("restore: records / seconds (lstm_worker_restore_*)", f"{s.restore_records:,} / {s.restore_seconds:.1f}"),
        ("restore rate (records/s)", f"{s.restore_per_s:,.0f}"),
        ("RSS idle / with keys resident (MiB)", f"{s.idle_rss / 2**20:,.0f} / {s.full_rss / 2**20:,.0f}"),
        ("keys resident (lstm_worker_cache_keys)", f"{s.resident_keys:,}"),
        ("RSS per resident key (bytes)", f"{s.bytes_per_key:,.0f}"),
        ("raw state per key (bytes); RSS per key / raw", f"{s.raw_bytes_per_key:,}; {s.vs_raw:.2f}"),
        ("cold misses / lookups in the window", f"{s.cold_misses:,} / {s.cold_lookups:,}"),
        ("cold misses served per second", f"{s.misses_per_s:,.0f}"),
    ]
    return lines + table(["measure", "value"], rows, (1,))


def scaling_section(r: BenchResults) -> list[str]:
    one, two = r.drain, r.scaling
    if one is None or two is None:
        return []
    lines = [
        "## 6. Scaling: two workers against one",
        "",
        _context(r),
        "",
        "The same pre-loaded topic drained again by two worker processes in a fresh group (fresh",
        "output and state topics), started together; both on this machine's cores with the broker.",
        "",
    ]
    rows = [
        ("workers", 1, 2),
        ("events/s (first to last prediction)", f"{one.events_per_s:,.0f}", f"{two.events_per_s:,.0f}"),
        ("predictions per worker", _join(one.per_worker), _join(two.per_worker)),
        ("duplicates (at least once, rebalance)", f"{one.duplicates:,}", f"{two.duplicates:,}"),
        ("mean keys per round", f"{one.round_keys:.1f}", f"{two.round_keys:.1f}"),
        ("workers' CPU (cores)", f"{one.cpu_cores:.2f}", f"{two.cpu_cores:.2f}"),
        ("whole machine CPU (cores)", f"{one.machine_cores:.2f}", f"{two.machine_cores:.2f}"),
        ("the hypervisor's steal (cores)", f"{one.steal_cores:.2f}", f"{two.steal_cores:.2f}"),
    ]
    lines += table(["measure", "one worker", "two workers"], rows, (1, 2))
    return [*lines, "", f"Two workers / one: **{two.events_per_s / one.events_per_s:.2f}x**."]


def _join(values: list[int]) -> str:
    return " + ".join(f"{v:,}" for v in values)


def targets_section(r: BenchResults) -> list[str]:
    rows = [(t.what, t.shown(), t.verdict()) for t in targets(r)]
    return [
        "## Targets",
        "",
        _context(r),
        "",
        "The targets are bench/targets.py's; every verdict is of figures of this run alone (never",
        "asserted in tests). The drain's ratios to the kernel and to the per-event step use those two",
        "timed again right after the drain (section 3), when it was: this machine's speed moves from",
        "minute to minute. The JSON and Avro drains are held to the mean of the msgpack drains run",
        "before and after them (section 3).",
        "",
        *table(["target", "measured", "verdict"], rows, (1,)),
    ]


def _scheduling(r: BenchResults) -> list[str]:
    """Who got the cores first: the broker and the load generator stand for machines of their own."""
    sch = r.scheduling
    if sch is None:
        return []
    if sch.broker is not None:
        broker = f"the broker (pid {sch.broker_pid}) at nice {sch.broker}"
    elif sch.broker_pid is not None:
        broker = f"the broker's nice not read (pid {sch.broker_pid} not running at the start)"
    else:
        broker = "the broker's nice not read (no `--broker-pid`)"
    return [
        f"CPU priorities in parts 3-6: the workers at nice {sch.workers}, the load generator of the latency",
        f"runs at nice {sch.generator}, {broker}. In a deployment the broker and the producers",
        "run on machines of their own; here they share the cores with the worker under test, and at",
        "a lower priority the scheduler runs the worker first when both are ready (`--load-nice`,",
        "`make bench`'s `BENCH_NICE`).",
    ]


def _errors(r: BenchResults) -> list[str]:
    if not r.errors:
        return []
    lines = ["## Parts that failed in this run", "", "Their sections are missing; the worker logs say more.", ""]
    return lines + [f"- {part}: `{why.splitlines()[0][:300]}`" for part, why in r.errors.items()]


def render(r: BenchResults) -> str:
    parts = [
        [
            "# Benchmarks",
            "",
            "Written by `make bench` (`python -m bench`); every figure below is from the one run that",
            f"wrote this file ({r.wall_s / 60:.1f} minutes), on one machine, against a real local Kafka broker.",
        ],
        _scheduling(r),
        _errors(r),
        targets_section(r) if r.drain_input else ["Parts 3-6 (Kafka) were not run: `--skip-kafka`."],
        kernel_section(r),
        drain_section(r),
        latency_section(r),
        versus_section(r),
        state_section(r),
        scaling_section(r),
    ]
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"
