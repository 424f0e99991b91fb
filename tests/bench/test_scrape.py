"""Readings of a worker from outside: Prometheus text, /proc status and stat."""

from __future__ import annotations

import os

import pytest

from bench.scrape import (
    by_label,
    cpu_seconds,
    parse_cpu_ticks,
    parse_machine_ticks,
    parse_metrics,
    parse_nice,
    parse_vm_rss,
    process_nice,
    rss_bytes,
    sample,
)

TEXT = """\
# HELP lstm_worker_predictions_total Predictions published
# TYPE lstm_worker_predictions_total counter
lstm_worker_predictions_total 20000.0
lstm_worker_cache_lookups_total{result="hit"} 12.0
lstm_worker_cache_lookups_total{result="miss"} 4982.0
lstm_worker_busy_seconds_total{phase="poll"} 1.25
lstm_worker_busy_seconds_total{phase="step"} 3.5e+00
lstm_worker_round_keys_bucket{le="+Inf"} 45.0
lstm_worker_round_keys_sum 2101.0
lstm_worker_consumer_lag{partition="3",note="a \\"quoted\\" value"} 7.0
"""


def test_parse_metrics_reads_names_labels_and_values():
    samples = parse_metrics(TEXT)
    assert sample(samples, "lstm_worker_predictions_total") == 20000
    assert sample(samples, "lstm_worker_cache_lookups_total", result="miss") == 4982
    assert sample(samples, "lstm_worker_round_keys_bucket", le="+Inf") == 45
    assert sample(samples, "lstm_worker_round_keys_sum") == 2101
    assert sample(samples, "lstm_worker_consumer_lag", partition="3", note='a \\"quoted\\" value') == 7
    assert sample(samples, "lstm_worker_cache_lookups_total", result="new") == 0  # absent
    assert by_label(samples, "lstm_worker_busy_seconds_total", "phase") == {"poll": 1.25, "step": 3.5}


def test_parse_vm_rss():
    status = "Name:\tpython\nVmPeak:\t 9000 kB\nVmRSS:\t  614400 kB\nThreads:\t40\n"
    assert parse_vm_rss(status) == 614400 * 1024
    with pytest.raises(ValueError, match="VmRSS"):
        parse_vm_rss("Name:\tzombie\n")


def test_parse_cpu_ticks_with_a_process_name_holding_spaces():
    stat = "4242 (python -m worker) S 1 4242 4242 0 -1 4194304 100 0 0 0 1500 250 0 0 20 0 40 0 100 0 0"
    assert parse_cpu_ticks(stat) == 1750


def test_parse_nice_after_a_name_holding_spaces_and_parens():
    stat = "4242 (java (kafka) x) S 1 4242 4242 0 -1 4194304 100 0 0 0 1500 250 0 0 30 10 40 0 100 0 0"
    assert parse_nice(stat) == 10  # field 19; field 18 is the kernel's priority (20 + nice)


def test_the_nice_of_this_process_and_of_one_not_running():
    assert process_nice(os.getpid()) == os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert process_nice(2**22 + 1) is None  # above the kernel's pid_max: never a process


def test_parse_machine_ticks():
    ticks = parse_machine_ticks("cpu  100 5 50 800 45 0 0 0 0 0\ncpu0 1 2 3 4\n")
    assert (ticks.busy, ticks.steal, ticks.total) == (155, 0, 1000)


def test_steal_is_neither_the_machines_work_nor_idle_and_guest_time_counts_once():
    # user nice system idle iowait irq softirq steal guest guest_nice
    ticks = parse_machine_ticks("cpu  100 5 50 800 45 10 5 40 30 0\n")
    assert (ticks.busy, ticks.steal, ticks.total) == (170, 40, 1055)  # guest 30 is inside user already
    later = parse_machine_ticks("cpu  300 5 50 1000 45 10 5 140 30 0\n")
    busy, steal = later.shares_since(ticks)
    assert (busy, steal) == (200 / 500, 100 / 500)


def test_this_process_can_be_read():
    assert rss_bytes(os.getpid()) > 1 << 20
    assert cpu_seconds(os.getpid()) > 0
