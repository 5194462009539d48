"""Measuring what code costs: device synchronisation, timers, peak memory, peak FLOP/s and
model FLOPs utilisation. Chapters 3 to 6 and the benchmarks measure through this module.

A GPU runs asynchronously: a kernel launch returns at once, so a clock read without
:func:`synchronize` times the launch, not the work. Every timer here synchronises first.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

# Dense (not 2:4 sparse) peak FLOP/s by GPU name and compute dtype, from the vendors' data
# sheets. An H200 has the H100's compute with more, faster memory. H100 figures are for the
# SXM part (the PCIe card is slower: 756 TFLOP/s bf16).
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100": {"bfloat16": 989e12, "float32": 494e12},  # float32 runs as TF32
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
}

# Memory bandwidth (bytes/s) of the same parts, from the same data sheets (A100: the 80 GB
# SXM part).
MEMORY_BANDWIDTH: dict[str, float] = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.039e12}


def synchronize(device: torch.device | str) -> None:
    """Wait until a GPU has finished the work queued so far (CUDA runs asynchronously)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device | str = "cpu") -> tuple[T, float]:
    """Run ``fn()`` once; return its result and the wall-clock seconds it took."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def best_seconds(fn: Callable[[], object], *, repeats: int, warmup: int = 1,
                 device: torch.device | str = "cpu") -> float:
    """Fastest wall-clock time of ``fn()`` in ``repeats`` runs, after ``warmup`` runs.

    The minimum, not the mean: other processes on the machine only ever add time, so
    the fastest run is the best estimate of what the code itself costs.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    return min(timed(fn, device)[1] for _ in range(repeats))


def median_seconds(fn: Callable[[], object], *, repeats: int,
                   device: torch.device | str = "cpu") -> float:
    """Median wall-clock time of ``fn()`` over ``repeats`` runs: the typical cost when the
    runs themselves vary (a training step whose batches differ), where
    :func:`best_seconds` estimates the cost of identical work."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    return statistics.median(timed(fn, device)[1] for _ in range(repeats))


@contextlib.contextmanager
def _native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for a while: the profiler's C++ side logs
    "profiler_start" lines there at every start and stop (no setting turns them off),
    and a notebook would show them."""
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):  # no usable stderr: nothing to silence
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory_bytes(fn: Callable[[], object],
                      device: torch.device | str = "cpu") -> int:
    """Peak tensor memory allocated while ``fn()`` runs, above what existed before.

    On CUDA this is the caching allocator's peak statistic. A CPU has no such counter,
    so we record every allocation and free with torch's profiler
    (``profile_memory=True``) and take the maximum of their running sum. Both count
    tensor storage only, and give the same number on every run.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    allocations = _cpu_allocations(fn)
    peak = running = 0
    for _, size in sorted(allocations):
        running += size
        peak = max(peak, running)
    return peak


def _cpu_allocations(fn: Callable[[], object]) -> list[tuple[int, int]]:
    """(time, bytes) of every CPU allocation (positive) and free (negative) during ``fn()``:
    the profiler's event tree is the one place that logs them."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    allocations = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    return allocations


def peak_flops(device: torch.device | str, dtype: str) -> float | None:
    """The device's dense peak FLOP/s for ``dtype`` (``"bfloat16"`` or ``"float32"``) when
    :data:`PEAK_FLOPS` knows it; None on a CPU or an unknown GPU."""
    device = torch.device(device)
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {dtype!r}")
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS.items():
        if key in name:
            return peaks[dtype]
    return None


def mfu(tokens_per_second: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilisation: the model FLOP/s achieved over the device's peak (Chowdhery
    et al., 2022). ``flops_per_token`` comes from :func:`llmbook.costs.flops_per_token`;
    ``tokens_per_second`` and ``peak`` are per device."""
    if not peak > 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak}")
    return tokens_per_second * flops_per_token / peak
