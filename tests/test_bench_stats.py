"""The arithmetic of bench/evpn.py's reports: percentiles, CPU spent between readings, medians
over rounds. The benchmarks themselves run outside the test suite (docs/benchmarks.md)."""
from __future__ import annotations

import os
import time

import pytest

from bench.evpn import cpu_seconds, cpu_spent, percentile, rss_mib, scale_medians


def test_percentile_interpolates_between_ranks():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0


def test_cpu_spent_per_process_and_in_total():
    before = {"reflector": {"agent": 1.0, "bgp": 2.0}, "nodes": {"n1": {"agent": 0.5, "bgp": 1.0}}}
    after = {"reflector": {"agent": 1.25, "bgp": 4.5},
             "nodes": {"n1": {"agent": 1.0, "bgp": 3.0}, "n2": {"bgp": 0.75}}}
    spent = cpu_spent(before, after)
    assert spent["reflector"] == {"agent": 0.25, "bgp": 2.5}
    assert spent["nodes"] == {"n1": {"agent": 0.5, "bgp": 2.0}, "n2": {"bgp": 0.75}}  # new: all of it
    assert spent["total"] == pytest.approx(0.25 + 2.5 + 0.5 + 2.0 + 0.75)


def _round(setup, installed, withdrawn, cpu):
    return {"setup": setup, "all_installed_s": installed, "all_withdrawn_s": withdrawn,
            "cpu_install_s": {"total": cpu}}


def test_scale_medians_per_setup_skip_unfinished_rounds():
    results = [_round("ours", 7.0, 5.0, 13.0), _round("frr-rr", 6.0, 4.0, 10.0),
               _round("ours", 6.0, None, 12.0), _round("frr-rr", 5.0, 4.5, 9.0),
               _round("ours", 9.0, 6.0, 14.0), _round("frr-rr", None, None, 11.0)]
    medians = scale_medians(results)
    assert medians["ours"] == {"rounds": 3, "installed_s": 7.0, "withdrawn_s": 5.5, "all_cpu_s": 13.0}
    assert medians["frr-rr"] == {"rounds": 3, "installed_s": 5.5, "withdrawn_s": 4.25,
                                 "all_cpu_s": 10.0}


def test_scale_medians_of_a_setup_that_never_finished():
    assert scale_medians([_round("ours", None, None, 1.0)])["ours"]["installed_s"] is None


def test_cpu_and_memory_of_a_process_from_proc():
    before = cpu_seconds(os.getpid())
    deadline = time.monotonic() + 10  # a loaded machine still gives a busy loop 0.1 s of CPU
    while cpu_seconds(os.getpid()) < before + 0.1 and time.monotonic() < deadline:
        pass
    assert before + 0.1 <= cpu_seconds(os.getpid()) < before + 10
    assert 1 < rss_mib(os.getpid()) < 4096
    with pytest.raises(OSError):
        cpu_seconds(2 ** 22 + 1)  # above pid_max's ceiling: no such process
