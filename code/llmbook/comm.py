"""What communication costs: the alpha-beta model of a collective, fitted to
measurements. Chapter 6.

Sending ``m`` bytes over a link costs ``alpha + m / beta``: a fixed latency ``alpha``
per message and a bandwidth ``beta``. A ring all-reduce over ``n`` ranks (Patarasuk and
Yuan, 2009) sends each rank's data around the ring twice, once to reduce and once to
gather, in ``2 (n - 1)`` steps of ``m / n`` bytes:

    t = 2 (n - 1) alpha + 2 (n - 1) / n * m / beta

so for large messages the time depends on the bytes and the bandwidth only, not on
``n``. :func:`measure_allreduce` times gloo all-reduces between two local processes and
:func:`fit_alpha_beta` recovers the two constants by least squares.
"""

from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass(frozen=True)
class Link:
    """A link between GPUs: bandwidth per direction per GPU (bytes/s), latency (s)."""

    name: str
    bandwidth: float
    latency: float


LINKS: dict[str, Link] = {
    # NVIDIA H100 datasheet: NVLink 4, 900 GB/s total per GPU, 450 GB/s each direction.
    "nvlink4": Link("NVLink 4 (H100)", 450e9, 3e-6),
    # NVIDIA ConnectX-7 / Quantum-2: InfiniBand NDR, 400 Gb/s per port = 50 GB/s.
    "ib-ndr": Link("InfiniBand NDR 400 Gb/s", 400e9 / 8, 5e-6),
    # IEEE 802.3: 100 Gigabit Ethernet = 12.5 GB/s; TCP latency tens of microseconds.
    "100gbe": Link("100 Gb Ethernet", 100e9 / 8, 20e-6),
}


def allreduce_seconds(nbytes: float, n: int, bandwidth: float,
                      latency: float = 0.0) -> float:
    """Predicted time of a ring all-reduce of ``nbytes`` over ``n`` ranks."""
    if n < 1 or bandwidth <= 0 or latency < 0 or nbytes < 0:
        raise ValueError(f"need n >= 1, bandwidth > 0, latency >= 0, nbytes >= 0; got "
                         f"n={n}, bandwidth={bandwidth}, latency={latency}, "
                         f"nbytes={nbytes}")
    if n == 1:
        return 0.0
    return 2 * (n - 1) * latency + 2 * (n - 1) / n * nbytes / bandwidth


def fit_alpha_beta(nbytes: Sequence[float], seconds: Sequence[float],
                   n: int) -> tuple[float, float]:
    """Least-squares ``(latency, bandwidth)`` of :func:`allreduce_seconds` for measured
    all-reduce times; the model is linear in ``alpha`` and ``1 / beta``.

    Residuals are relative (each row divided by its time): sizes span orders of
    magnitude, and plain least squares would fit the largest message and let the
    small ones, where latency shows, go wrong by any factor."""
    if len(nbytes) != len(seconds) or len(nbytes) < 2 or n < 2:
        raise ValueError("need at least two (nbytes, seconds) pairs of equal length "
                         f"and n >= 2; got {len(nbytes)} sizes, {len(seconds)} times, "
                         f"n={n}")
    m = np.asarray(nbytes, dtype=np.float64)
    design = np.stack([np.full_like(m, 2 * (n - 1)), 2 * (n - 1) / n * m], axis=1)
    t = np.asarray(seconds, dtype=np.float64)
    (alpha, inv_beta), *_ = np.linalg.lstsq(design / t[:, None], np.ones_like(t),
                                            rcond=None)
    if inv_beta <= 0 or alpha < 0:
        raise ValueError(f"the fit gave latency {alpha:.3g} s and 1/bandwidth "
                         f"{inv_beta:.3g} s/B, not both positive; time more repeats "
                         "over a wider range of sizes")
    return float(alpha), float(1.0 / inv_beta)


def free_port() -> int:
    """A TCP port the OS says is free now (bind to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _allreduce_worker(rank: int, world: int, port: int, sizes: list[int], repeats: int,
                      results) -> None:
    """One rank: ``repeats`` rounds, each timing one all-reduce of every size (float32);
    the fastest of each size."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        buffers = [torch.ones(size // 4) for size in sizes]
        for x in buffers:
            dist.all_reduce(x)  # warm-up: connections, buffers
        best = [math.inf] * len(sizes)
        for _ in range(repeats):
            for i, x in enumerate(buffers):
                dist.barrier()
                start = time.perf_counter()
                dist.all_reduce(x)
                best[i] = min(best[i], time.perf_counter() - start)
        if rank == 0:
            results.put(best)
    finally:
        dist.destroy_process_group()


def measure_allreduce(sizes: Sequence[int], *, world_size: int = 2,
                      repeats: int = 100) -> list[float]:
    """Fastest of ``repeats`` timings of a gloo all-reduce of each size in bytes, between
    ``world_size`` local processes (spawned, one thread each).

    The minimum, not the median: on a shared machine other processes only ever add time.
    Each round times every size once, so that a slow spell of the machine slows all sizes
    alike instead of one. One call at a time, not the mean of a burst: back to back, the
    ranks' communication threads compete for the cores. On the book's 2-core machine,
    sizes 4 KB to 2 MB: with 3 repeats of each size in turn the fitted model was off by up
    to 87% at one size; with 100 interleaved rounds (under a second), by at most 15%
    over 4 runs, alpha 100 to 130 us and beta 2.2 to 2.9 GB/s."""
    if any(s < 4 for s in sizes):
        raise ValueError(f"sizes are bytes of float32 data, at least 4; got "
                         f"{list(sizes)}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_allreduce_worker, nprocs=world_size, start_method="spawn",
                       args=(world_size, free_port(), list(sizes), repeats, results))
    return results.get()
