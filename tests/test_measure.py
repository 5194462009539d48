"""Tests for llmbook.measure: timers, peak FLOP/s and model FLOPs utilisation. Timers are
checked for what they compute (which statistic of which runs), never for how fast anything is."""

from __future__ import annotations

import itertools

import pytest
import torch

from llmbook import measure


def fake_clock(monkeypatch, durations):
    """Make ``time.perf_counter`` return ticks such that successive timed calls last
    ``durations`` seconds."""
    ticks = itertools.accumulate(d for pair in ((0.0, d) for d in durations) for d in pair)
    values = iter(list(ticks))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(values))


def test_timed_returns_the_result_and_the_duration(monkeypatch):
    fake_clock(monkeypatch, [2.5])
    assert measure.timed(lambda: "done") == ("done", 2.5)


def test_best_is_the_minimum_and_median_the_median(monkeypatch):
    calls = []
    fake_clock(monkeypatch, [3.0, 1.0, 2.0])
    assert measure.best_seconds(lambda: calls.append(1), repeats=3, warmup=2) == 1.0
    assert len(calls) == 5  # the warm-up runs are run, not timed
    fake_clock(monkeypatch, [3.0, 1.0, 2.0, 10.0])
    assert measure.median_seconds(lambda: None, repeats=4) == 2.5
    with pytest.raises(ValueError, match="repeats"):
        measure.best_seconds(lambda: None, repeats=0)


def test_peak_flops_and_mfu():
    assert measure.peak_flops("cpu", "bfloat16") is None  # no table entry for CPUs
    assert measure.PEAK_FLOPS["H100"]["bfloat16"] == 989e12  # dense, SXM
    with pytest.raises(ValueError, match="dtype"):
        measure.peak_flops("cpu", "float16")
    # 1e5 tokens/s of a model costing 6e9 FLOPs/token on a 1.2e15 FLOP/s device: 50%
    assert measure.mfu(1e5, 6e9, 1.2e15) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="peak"):
        measure.mfu(1.0, 1.0, 0.0)


def test_peak_memory_bytes_counts_cpu_allocations():
    def fn():
        a = torch.empty(1_000_000, dtype=torch.uint8)
        b = torch.empty(3_000_000, dtype=torch.uint8)
        del a, b
        c = torch.empty(2_000_000, dtype=torch.uint8)  # after both were freed
        del c

    assert measure.peak_memory_bytes(fn) == 4_000_000
