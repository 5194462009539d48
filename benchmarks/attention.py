"""Benchmark of llmbook.attention (Chapter 3): what attention costs, naive against tiled against torch's kernel.

Measures, in one run and on the same inputs:

* forward + backward time and peak memory against sequence length T for the naive five-line attention, our
  flash-style tiled attention and torch's fused ``scaled_dot_product_attention`` (causal, fp32 on CPU, bf16 on a
  GPU), with ratios to torch and the growth exponent of each one's memory (2 = quadratic, 1 = linear);
* that tiled and naive attention agree (outputs and gradients);
* the overhead of our :class:`~llmbook.attention.CausalSelfAttention` with ``fused=True`` over the same
  projections calling torch's kernel directly (the target is at most 1.1x).

Prints exactly one JSON object on stdout. ``--quick`` runs a reduced sweep in under a minute on 2 CPU cores.

    python benchmarks/attention.py --quick
    python benchmarks/attention.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.attention import CausalSelfAttention, scaled_dot_product_attention
from llmbook.flash import ATTENTION_IMPLEMENTATIONS, measure_attention_cost, tiled_attention


def machine_info(device: torch.device) -> dict:
    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu_model": cpu_model,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def memory_exponent(seq_lens: list[int], peaks: list[int]) -> float:
    """Local growth exponent of memory between the two longest sequences: log(m2/m1) / log(T2/T1)."""
    return math.log(peaks[-1] / peaks[-2]) / math.log(seq_lens[-1] / seq_lens[-2])


def scaling_sweep(seq_lens: list[int], *, device: torch.device, dtype: torch.dtype, n_heads: int, head_dim: int,
                  repeats: int, naive_max_len: int) -> dict:
    rows = []
    for T in seq_lens:
        for impl in ATTENTION_IMPLEMENTATIONS:
            if impl == "naive" and T > naive_max_len:
                continue
            cost = measure_attention_cost(impl, T, n_heads=n_heads, head_dim=head_dim, device=device, dtype=dtype,
                                          repeats=repeats)
            rows.append({"impl": impl, "seq_len": T, "best_seconds": round(cost.seconds, 6),
                         "peak_bytes": cost.peak_bytes, "peak_mib": round(cost.peak_bytes / 2**20, 3)})
    by = {(r["impl"], r["seq_len"]): r for r in rows}
    ratios = []
    for T in seq_lens:
        fused = by[("torch_fused", T)]
        entry = {"seq_len": T}
        for impl in ("naive", "tiled"):
            if (impl, T) in by:
                seconds = by[(impl, T)]["best_seconds"]
                entry[f"{impl}_time_vs_torch"] = round(seconds / fused["best_seconds"], 3)
                entry[f"{impl}_memory_vs_torch"] = round(by[(impl, T)]["peak_bytes"] / fused["peak_bytes"], 3)
        if ("naive", T) in by:
            entry["naive_memory_vs_tiled"] = round(by[("naive", T)]["peak_bytes"] / by[("tiled", T)]["peak_bytes"], 3)
            speedup = by[("naive", T)]["best_seconds"] / by[("tiled", T)]["best_seconds"]
            entry["tiled_speedup_vs_naive"] = round(speedup, 3)
        ratios.append(entry)
    growth = {}
    for impl in ATTENTION_IMPLEMENTATIONS:
        lens = [T for T in seq_lens if (impl, T) in by]
        peaks = [by[(impl, T)]["peak_bytes"] for T in lens]
        growth[impl] = {
            "memory_exponent_last_doubling": round(memory_exponent(lens, peaks), 3),
            "peak_bytes_per_token": [round(p / T, 1) for p, T in zip(peaks, lens)],
            # extra bytes per extra token between consecutive lengths: constant for linear growth, growing
            # in proportion to T for quadratic growth
            "marginal_bytes_per_token": [round((p2 - p1) / (T2 - T1), 1)
                                         for p1, p2, T1, T2 in zip(peaks, peaks[1:], lens, lens[1:])],
        }
    return {"rows": rows, "ratios": ratios, "memory_growth": growth}


def agreement(device: torch.device, dtype: torch.dtype, T: int = 300) -> dict:
    """Largest difference between tiled and naive attention, forward and backward, and between naive and torch."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, T, 64, generator=gen).to(device, dtype).requires_grad_() for _ in range(3))
    grad_out = torch.randn(2, 4, T, 64, generator=gen).to(device, dtype)
    results = {}
    outs = {
        "naive": scaled_dot_product_attention(q, k, v, is_causal=True),
        "tiled": tiled_attention(q, k, v, is_causal=True),
        "torch_fused": F.scaled_dot_product_attention(q, k, v, is_causal=True),
    }
    grads = {name: torch.autograd.grad(out, (q, k, v), grad_out) for name, out in outs.items()}
    for a, b in (("tiled", "naive"), ("naive", "torch_fused")):
        results[f"{a}_vs_{b}"] = {
            "max_abs_diff_output": (outs[a] - outs[b]).abs().max().item(),
            "max_abs_diff_grads": max((x - y).abs().max().item() for x, y in zip(grads[a], grads[b])),
        }
    results["seq_len"] = T
    return results


class DirectSDPA(nn.Module):
    """The least a multi-head attention layer can do: project, split heads, torch's kernel, merge, project."""

    def __init__(self, ours: CausalSelfAttention) -> None:
        super().__init__()
        self.n_heads = ours.n_heads
        self.qkv = nn.Linear(ours.d_model, 3 * ours.d_model)
        self.proj = nn.Linear(ours.d_model, ours.d_model)
        self.load_state_dict({k: v for k, v in ours.state_dict().items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def module_overhead(*, device: torch.device, dtype: torch.dtype, batch_size: int, seq_len: int, d_model: int,
                    n_heads: int, pairs: int) -> dict:
    """Forward + backward of our module (fused=True) against :class:`DirectSDPA`, timed in interleaved pairs so
    that both see the same machine load."""
    torch.manual_seed(0)
    ours = CausalSelfAttention(d_model, n_heads, fused=True).to(device, dtype)
    direct = DirectSDPA(ours).to(device, dtype)
    x = torch.randn(batch_size, seq_len, d_model, device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn_like(x)
    max_diff = (ours(x) - direct(x)).abs().max().item()

    def step(module: nn.Module) -> float:
        module.zero_grad(set_to_none=True)
        x.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        module(x).backward(grad_out)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for _ in range(3):  # warm up both
        step(ours), step(direct)
    times_ours, times_direct = [], []
    for i in range(pairs):  # alternate which goes first
        if i % 2 == 0:
            times_ours.append(step(ours))
            times_direct.append(step(direct))
        else:
            times_direct.append(step(direct))
            times_ours.append(step(ours))
    # each pair ran back to back under the same load: the median of the pairs' ratios
    ratio = statistics.median(a / b for a, b in zip(times_ours, times_direct))
    return {
        "shape": {"batch_size": batch_size, "seq_len": seq_len, "d_model": d_model, "n_heads": n_heads},
        "pairs": pairs,
        "ours_fused_median_seconds": round(statistics.median(times_ours), 6),
        "direct_torch_median_seconds": round(statistics.median(times_direct), 6),
        "ours_fused_best_seconds": round(min(times_ours), 6),
        "direct_torch_best_seconds": round(min(times_direct), 6),
        "ratio": round(ratio, 4),
        "ratio_of_best": round(min(times_ours) / min(times_direct), 4),
        "within_1.1x": ratio <= 1.1,
        "max_abs_diff_output": max_diff,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sweep, under a minute on 2 CPU cores")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice, one per core); 1 is steadier "
                             "on a machine shared with other jobs")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be positive, got {args.threads}")
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    start = time.perf_counter()
    torch.manual_seed(0)
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    if on_gpu:
        seq_lens = [512, 1024, 2048, 4096] if args.quick else [512, 1024, 2048, 4096, 8192, 16384]
        naive_max_len, repeats = 16384, 5 if args.quick else 10
        overhead = dict(batch_size=8, seq_len=1024, d_model=768, n_heads=12, pairs=30 if args.quick else 100)
    else:
        seq_lens = [256, 512, 1024, 2048] if args.quick else [256, 512, 1024, 2048, 4096]
        naive_max_len, repeats = 4096, 3 if args.quick else 5
        overhead = dict(batch_size=4, seq_len=256, d_model=384, n_heads=6, pairs=30 if args.quick else 100)
    shape = {"batch_size": 1, "n_heads": 4, "head_dim": 64, "is_causal": True, "dtype": str(dtype),
             "measured": "forward + backward, fastest of `repeats` runs", "repeats": repeats,
             "tiled_blocks": [128, 128]}
    result = {
        "benchmark": "attention",
        "quick": args.quick,
        "machine": machine_info(device),
        "scaling_shape": shape,
        "scaling": scaling_sweep(seq_lens, device=device, dtype=dtype, n_heads=shape["n_heads"],
                                 head_dim=shape["head_dim"], repeats=repeats, naive_max_len=naive_max_len),
        "agreement": agreement(device, dtype),
        "module_overhead": module_overhead(device=device, dtype=dtype, **overhead),
        "memory_method": ("torch.cuda.max_memory_allocated" if on_gpu else
                          "torch.profiler (profile_memory=True): max running sum of tensor allocations"),
    }
    result["wall_seconds"] = round(time.perf_counter() - start, 2)
    # other jobs on the machine distort timings (never memory): say how busy it was
    result["machine"]["load_average_1min"] = {"before": load_before[0], "after": os.getloadavg()[0]}
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
