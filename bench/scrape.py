"""Readings of a running worker from outside: its Prometheus text, and /proc (RSS, CPU time).

Parsing is kept apart from reading so that it can be tested on fixed text.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition -> {(name, sorted labels): value}; comments are skipped."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        samples[(name, tuple(sorted(_LABEL.findall(labels or ""))))] = float(value)
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value, 0 when absent (a counter not incremented yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Every sample of `name`, keyed by the value of `label`."""
    return {dict(labels)[label]: value for (n, labels), value in samples.items() if n == name and label in dict(labels)}


def parse_vm_rss(status: str) -> int:
    """Bytes of `VmRSS` in the text of /proc/<pid>/status."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            number, unit = line.split()[1:3]
            if unit.lower() != "kb":
                raise ValueError(f"unexpected VmRSS unit {unit!r}")
            return int(number) * 1024
    raise ValueError("no VmRSS line (has the process exited?)")


def _stat_fields(stat: str) -> list[str]:
    """The fields of /proc/<pid>/stat after the name (which may hold spaces): proc(5)'s field 3 first."""
    return stat[stat.rindex(")") + 2 :].split()


def parse_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/<pid>/stat."""
    fields = _stat_fields(stat)
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def parse_nice(stat: str) -> int:
    """The nice value from the text of /proc/<pid>/stat (or of one thread's, under task/)."""
    return int(_stat_fields(stat)[16])  # field 19 of proc(5)


@dataclass(frozen=True)
class MachineTicks:
    """Clock ticks of all CPUs since boot. On a shared VM the hypervisor's steal is neither the
    machine's own work nor idle time: a vCPU ready to run while another guest ran."""

    busy: int  # user, nice, system, irq, softirq (guest time is counted inside user and nice)
    steal: int
    total: int  # the above, idle and iowait

    def shares_since(self, earlier: MachineTicks) -> tuple[float, float]:
        """(busy, steal) since `earlier`, each as a share of all CPUs' time."""
        ticks = max(self.total - earlier.total, 1)
        return (self.busy - earlier.busy) / ticks, (self.steal - earlier.steal) / ticks


def parse_machine_ticks(stat: str) -> MachineTicks:
    """The machine's ticks from the text of /proc/stat (its first line, all CPUs)."""
    values = [int(v) for v in stat.splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values + [0] * (8 - len(values))
    busy = user + nice + system + irq + softirq
    return MachineTicks(busy, steal, busy + steal + idle + iowait)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return parse_vm_rss(status.read())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        return parse_cpu_ticks(stat.read()) / os.sysconf("SC_CLK_TCK")


def process_nice(pid: int) -> int | None:
    """The nice value of a process's main thread; None when it is not running (a stale pid)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return parse_nice(stat.read())
    except (FileNotFoundError, ProcessLookupError):
        return None


def machine_ticks() -> MachineTicks:
    with open("/proc/stat") as stat:
        return parse_machine_ticks(stat.read())
