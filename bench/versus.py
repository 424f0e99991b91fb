"""Part 4's comparison with the Quix Streams peer: the same paced stream served by a fresh worker,
then by a fresh peer, at each rate of bench/targets.py's `VERSUS_RATES`; the stream is the one
the peer was first tried on (1,000 keys, 6 partitions), whatever the drain's sizes.

Either may fail to keep up with a rate: it is then stopped `CATCH_UP_S` after the producer's
end, and has no latency at that rate (`LatencyResult.sustained`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bench.kafka_io import BenchKafka
from bench.latency import LatencyResult, latency
from bench.peer_run import PeerLauncher
from bench.process import Launcher
from bench.targets import VERSUS_RATES

log = logging.getLogger(__name__)
VERSUS_KEYS, VERSUS_PARTITIONS = 1_000, 6
CATCH_UP_S = 15.0  # the peer commits every 5 s (Quix's default), and is seen to be done only then


@dataclass(frozen=True)
class Versus:
    rate: float  # offered, events/s
    worker: LatencyResult
    peer: LatencyResult


def versus(
    bench: BenchKafka, launcher: Launcher, peers: PeerLauncher, seconds: float, generator_nice: int
) -> list[Versus]:
    """The worker, then the peer, at each rate: `seconds` counted after the warm-up each."""
    runs = []
    for rate in VERSUS_RATES:
        served = {}
        for who, starter in (("worker", launcher), ("peer", peers)):
            log.info("bench: part 4, the %s at %d events/s for %.0f s", who, rate, seconds)
            served[who] = latency(
                bench,
                starter,
                rate,
                seconds,
                VERSUS_KEYS,
                VERSUS_PARTITIONS,
                name=f"versus-{who}-{rate}",
                generator_nice=generator_nice,
                catch_up_s=CATCH_UP_S,
            )
        runs.append(Versus(rate, served["worker"], served["peer"]))
    return runs
