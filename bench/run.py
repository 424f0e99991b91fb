"""One benchmark run, in order: kernel and baselines (no Kafka, quiet machine), the broker warmed up
(not counted), drain by one worker, the same events as JSON, as Avro and as msgpack again, the
same topic drained by the Quix Streams peer, drain by two workers, latency at half and at a
quarter of the drain rate, then the worker and the peer on the same paced stream at fixed rates,
state; then the plots and BENCHMARKS.md.

Every topic the run makes is deleted at its end; worker logs stay under `<workdir>/logs/<run>/`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.check import require, value_sample
from bench.drain import DrainInput, DrainResult, Registry, drain, planned_formats, preload
from bench.kafka_io import BenchError, BenchKafka
from bench.latency import LOW_LOAD_SHARE, latency
from bench.peer_run import NO_PEER, PEER_PYTHON, PeerLauncher, export_weights, peer_drain
from bench.process import Launcher
from bench.report import render
from bench.results import BenchResults, Scheduling, machine
from bench.scrape import process_nice
from bench.state import state
from bench.targets import LATENCY_LOAD_SHARE, goal
from bench.versus import versus
from worker.config import KafkaConfig
from worker.errors import ConfigError
from worker.options import Format

log = logging.getLogger(__name__)
# Live load on a throwaway topic before part 3, not counted: a fresh broker's JVM compiles Kafka's hot
# paths under its first load (docs/performance.md, "Benchmark method")
BROKER_WARMUP_PER_S = 12_000


@dataclass(frozen=True)
class BenchOptions:
    out: str = "BENCHMARKS.md"
    events: int = 200
    min_seconds: float = 1.0
    drain_events: int = 1_000_000
    drain_keys: int = 10_000
    partitions: int = 12
    latency_seconds: float = 60.0
    state_keys: int = 1_000_000
    cold_cache_keys: int = 10_000
    broker_warmup_seconds: float = 80.0
    load_nice: int = 10
    broker_pid: int | None = None  # only read, for the report: `make bench` starts its broker at nice 10
    skip_kafka: bool = False
    workdir: str = ".cache/bench"
    schema_registry_url: str | None = None  # of part 3's Avro drain, skipped without it
    versus_seconds: float = 30.0  # each latency run of the worker and the peer at VERSUS_RATES
    peer_python: str = PEER_PYTHON  # the Quix Streams peer's venv (`make peer`), skipped without it

    def command(self, bootstrap: str | None) -> str:
        words = [
            "python -m bench",
            f"--out {self.out}",
            f"--events {self.events}",
            f"--min-seconds {self.min_seconds:g}",
        ]
        if self.skip_kafka or bootstrap is None:
            return " ".join([*words, "--skip-kafka"])
        return " ".join(
            [
                *words,
                f"--bootstrap-servers {bootstrap}",
                f"--drain-events {self.drain_events}",
                f"--drain-keys {self.drain_keys}",
                f"--partitions {self.partitions}",
                f"--latency-seconds {self.latency_seconds:g}",
                f"--versus-seconds {self.versus_seconds:g}",
                f"--state-keys {self.state_keys}",
                f"--cold-cache-keys {self.cold_cache_keys}",
                f"--broker-warmup-seconds {self.broker_warmup_seconds:g}",
                f"--load-nice {self.load_nice}",
                *([f"--schema-registry-url {self.schema_registry_url}"] if self.schema_registry_url else []),
                *([f"--peer-python {self.peer_python}"] if self.peer_python != PEER_PYTHON else []),
            ]
        )

    def __post_init__(self) -> None:
        if not 0 <= self.load_nice <= 19:
            raise ConfigError(f"--load-nice must be 0 to 19 (Linux nice values), got {self.load_nice}")


def run_benchmarks(options: BenchOptions, kafka: KafkaConfig | None) -> BenchResults:
    from bench.kernel import measure_kernel

    started = time.monotonic()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    log.info("bench: parts 1-2, step kernel sweep and the source post's four approaches (load average %s)", load)
    results = BenchResults(
        command=options.command(None if kafka is None else kafka.bootstrap_servers),
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
        machine=machine(),
        load=load,
        kernel=measure_kernel(options.min_seconds, options.events),
    )
    if kafka is not None and not options.skip_kafka:
        kafka_parts(results, options, kafka)
    results.wall_s = time.monotonic() - started
    return results


def reference_model(workdir: Path) -> tuple[Path, str, list[int]]:
    """The reference model as `make-model` writes it; its fingerprint and state layout as the worker sees them."""
    from worker.model import StreamingTwin, fingerprint, load_model
    from worker.model.reference import make_reference_model, save_model

    path = workdir / "reference.keras"
    save_model(make_reference_model(features=4, units=(100, 200), seed=0), str(path))
    model = load_model(str(path))
    return path, fingerprint(model), StreamingTwin.from_model(model).state_sizes


def _warm_up_broker(results: BenchResults, options: BenchOptions, bench: BenchKafka, launcher: Launcher) -> None:
    results.broker_warmup = latency(
        bench,
        launcher,
        BROKER_WARMUP_PER_S,
        options.broker_warmup_seconds,
        options.drain_keys,
        options.partitions,
        warmup_s=0.0,
        name="broker-warmup",
        generator_nice=options.load_nice,
    )


def kafka_parts(results: BenchResults, options: BenchOptions, kafka: KafkaConfig) -> None:
    """Parts 3-6 against the broker of `kafka`, into `results`. A part that fails is recorded in
    `results.errors` and the next ones still run (each but the latency part stands alone)."""
    run = time.strftime("%Y%m%d-%H%M%S")
    workdir = Path(options.workdir)
    logs = workdir / "logs" / run
    logs.mkdir(parents=True, exist_ok=True)
    model_path, fp, sizes = reference_model(workdir)
    bench, launcher = BenchKafka(kafka, run), Launcher(kafka, model_path, logs)
    peers = None
    if Path(options.peer_python).is_file():
        peers = PeerLauncher(kafka, options.peer_python, export_weights(model_path, workdir / "reference.npz"), logs)
    else:
        results.peer_skipped = NO_PEER
    pid = options.broker_pid
    results.scheduling = Scheduling(
        workers=os.getpriority(os.PRIO_PROCESS, 0),
        generator=options.load_nice,
        broker=None if pid is None else process_nice(pid),
        broker_pid=pid,
    )

    def part(name: str, measure: Callable[[], None]) -> None:
        try:
            measure()
        except Exception as exc:  # recorded in the report, raised at its end: the other parts still count
            log.exception("bench: %s failed (worker logs under %s)", name, logs)
            results.errors[name] = f"{type(exc).__name__}: {exc}"
        finally:
            launcher.stop_all()
            if peers is not None:
                peers.stop_all()

    try:
        if options.broker_warmup_seconds > 0:
            log.info(
                "bench: warming the broker up, %.0f events/s for %.0f s",
                BROKER_WARMUP_PER_S,
                options.broker_warmup_seconds,
            )
            part("broker warm-up", lambda: _warm_up_broker(results, options, bench, launcher))
        log.info("bench: part 3, pre-loading %d events over %d keys", options.drain_events, options.drain_keys)
        data = preload(bench, options.drain_events, options.drain_keys, options.partitions)
        results.drain_input = data.produced
        expected = value_sample(model_path, options.drain_events, options.drain_keys, options.partitions)

        def one() -> None:
            from bench.kernel import time_near_drain

            results.drain = _checked(drain(bench, launcher, data, workers=1, expected=expected))
            results.near_drain = time_near_drain(
                results.drain.round_keys, results.kernel.backend, options.min_seconds, options.events
            )

        def drain_as(fmt: Format) -> None:
            source = data if fmt == "msgpack" else _preload_as(fmt, data, bench, options.schema_registry_url)
            results.formats.append(_checked(drain(bench, launcher, source, tag=f"drain-{fmt}", expected=expected)))

        def two() -> None:
            results.scaling = _checked(drain(bench, launcher, data, workers=2, expected=expected))

        def load() -> None:
            if results.drain is None:
                raise BenchError("no drain rate to take a share of")
            for share in (LATENCY_LOAD_SHARE, LOW_LOAD_SHARE):
                rate = share * results.drain.events_per_s
                log.info("bench: part 4, latency at %.0f events/s for %.0f s", rate, options.latency_seconds)
                measured = latency(
                    bench,
                    launcher,
                    rate,
                    options.latency_seconds,
                    options.drain_keys,
                    options.partitions,
                    name=f"latency{round(share * 100)}",
                    generator_nice=options.load_nice,
                )
                if share == LATENCY_LOAD_SHARE:
                    results.latency = measured
                else:
                    results.latency_low = measured

        def peer() -> None:
            if peers is not None:
                drained = peer_drain(bench, peers, data, expected)
                require(drained.values, "the peer's drain")
                results.peer_drain = drained

        def against_peer() -> None:
            if peers is not None:
                results.versus = versus(bench, launcher, peers, options.versus_seconds, options.load_nice)

        def states() -> None:
            log.info("bench: part 5, state of %d keys", options.state_keys)
            results.state = state(
                bench, launcher, options.state_keys, options.partitions, sizes, fp, options.cold_cache_keys
            )

        part("3. drain", one)
        formats, results.formats_skipped = planned_formats(options.schema_registry_url)
        for fmt in formats:
            log.info("bench: part 3, the same events drained as %s", fmt)
            part("3. msgpack drain again" if fmt == "msgpack" else f"3. {fmt} drain", partial(drain_as, fmt))
        log.info("bench: part 3, the same topic drained by the Quix Streams peer")
        part("3. peer drain", peer)
        log.info("bench: part 6, two workers on the same topic")
        part("6. scaling", two)
        part("4. latency", load)
        part("4. latency against the peer", against_peer)
        part("5. state", states)
    finally:
        launcher.stop_all()
        bench.delete_all()


def _preload_as(fmt: Format, data: DrainInput, bench: BenchKafka, registry_url: str | None) -> DrainInput:
    """`data`'s events again in `fmt`; Avro's through the registry, connected (and checked) here."""
    registry = Registry.connect(registry_url) if fmt == "avro" and registry_url else None
    return preload(bench, data.events, data.keys, data.partitions, fmt, registry)


def _checked(result: DrainResult) -> DrainResult:
    """The drain, when its sampled values are right (else BenchError: its figure does not count)."""
    if result.missing:
        log.warning(
            "drain workers=%d format=%s: %d events without a prediction", result.workers, result.format, result.missing
        )
    require(result.values, f"the {result.format} drain by {result.workers} worker(s)")
    return result


def draw_plots(results: BenchResults, out_dir: Path) -> dict[str, str]:
    """PNGs under `<out_dir>/bench/`; name -> path relative to the report. None without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("no plots: matplotlib is missing (pip install 'lstm-stream-worker[demo]')")
        return {}
    from bench.plots import kernel_plot, latency_plot, phases_plot

    (out_dir / "bench").mkdir(parents=True, exist_ok=True)
    k, plots = results.kernel, {"kernel": "bench/kernel.png"}
    drains = {}
    if results.drain:
        drains["one worker"] = (results.drain.round_keys, results.drain.events_per_s)
    if results.scaling:
        drains["two workers"] = (results.scaling.round_keys, results.scaling.events_per_s)
    kernel_plot(out_dir / plots["kernel"], k.sweep, drains, k.flops)
    if results.latency:
        plots["latency"] = "bench/latency.png"
        lat = results.latency
        latency_plot(
            out_dir / plots["latency"], lat.latency_ms, lat.target_per_s, lat.warmup_latency_ms, goal("latency_p99_ms")
        )
    if results.drain:
        plots["phases"] = "bench/phases.png"
        runs = {"one worker": results.drain.busy_s} | (
            {"two workers": results.scaling.busy_s} if results.scaling else {}
        )
        phases_plot(out_dir / plots["phases"], runs)
    return plots


def write_benchmarks(options: BenchOptions, kafka: KafkaConfig | None = None) -> BenchResults:
    """Run everything and write the report (and its PNGs next to it)."""
    results = run_benchmarks(options, kafka)
    out = Path(options.out)
    results.plots = draw_plots(results, out.parent)
    out.write_text(render(results))
    if results.errors:
        raise BenchError(f"{out} written, but these parts failed: {'; '.join(results.errors)}")
    return results
