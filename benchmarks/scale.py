"""Benchmark for Chapter 6 (training at scale) on the CPU. Prints one JSON object.

1. **Data parallelism**: the median step time of our from-scratch
   :class:`~llmbook.parallel.ddp.DataParallel` and of torch's ``DistributedDataParallel``
   on 2 gloo processes (the same model and per-rank batch, steps alternated so that the
   machine's load hits both alike), their ratio, and one process's step time on the same
   per-rank batch (weak scaling: efficiency = one process's time / two processes' time).
2. **Activation checkpointing**: the step time with per-block and with selective
   (attention-only) checkpointing over none (:func:`llmbook.memory.recompute_overhead`)
   and the saved activation bytes of each, measured with ``saved_tensors_hooks``.
3. **Gradient accumulation**: the largest difference between the gradient of one batch
   and that of K micro-batches of it, each loss weighted by its share (exact up to float
   rounding).

Usage: ``python benchmarks/scale.py [--quick] [--out results.json]``; ``--quick`` runs in
under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from llmbook.artifacts import atomic_write_text
from llmbook.memory import apply_checkpointing, measure_activation_bytes, recompute_overhead
from llmbook.model import GPT, GPTConfig
from llmbook.parallel.dist import spawn
from llmbook.parallel.experiments import ddp_timing_worker


def model_config(quick: bool) -> GPTConfig:
    width, layers, block = (128, 4, 128) if quick else (256, 6, 256)
    return GPTConfig(vocab_size=512, block_size=block, n_layer=layers, n_head=4,
                     d_model=width, dropout=0.0, bias=False)


def data_parallel(config: GPTConfig, batch_size: int, steps: int) -> dict:
    two = spawn(ddp_timing_worker, 2, config, batch_size, steps, timeout=300)
    one = spawn(ddp_timing_worker, 1, config, batch_size, steps, timeout=300)[0]
    ours = max(r["ours"] for r in two)  # a step ends when the slowest rank is done
    theirs = max(r["torch"] for r in two)
    return {"processes": 2, "batch_per_rank": batch_size, "ours_s": ours,
            "torch_s": theirs, "ours_over_torch": ours / theirs,
            "one_process_s": one["plain"], "weak_scaling_efficiency": one["plain"] / ours}


def checkpointing(config: GPTConfig, batch_size: int, repeats: int) -> dict:
    idx = torch.randint(0, config.vocab_size, (batch_size, config.block_size),
                        generator=torch.Generator().manual_seed(0))
    out = {}
    for mode in ("none", "attention", "block"):
        torch.manual_seed(0)
        model = GPT(config) if mode == "none" else apply_checkpointing(GPT(config), mode)
        out[f"{mode}_saved_bytes"] = measure_activation_bytes(model, idx, idx)
        if mode != "none":
            out[f"{mode}_time_ratio"] = recompute_overhead(
                config, batch_size, config.block_size, mode=mode, repeats=repeats)
            out[f"{mode}_memory_ratio"] = (out[f"{mode}_saved_bytes"]
                                           / out["none_saved_bytes"])
    return out


def accumulation(config: GPTConfig, batch_size: int, k: int) -> dict:
    torch.manual_seed(0)
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (batch_size * k, config.block_size))
    model(idx, idx)[1].backward()
    whole = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    for chunk in idx.chunk(k):
        (model(chunk, chunk)[1] / k).backward()  # equal chunks: weight 1/K each
    gap = max(float((p.grad - g).abs().max()) for p, g in zip(model.parameters(), whole))
    scale = max(float(g.abs().max()) for g in whole)
    return {"micro_batches": k, "max_abs_difference": gap, "max_abs_gradient": scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = model_config(args.quick)
    steps, repeats = (5, 3) if args.quick else (20, 7)
    result = {
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads_per_process": 1},
        "model": {"n_layer": config.n_layer, "d_model": config.d_model,
                  "block_size": config.block_size,
                  "parameters": sum(p.numel() for p in GPT(config).parameters())},
        "data_parallel": data_parallel(config, 4, steps),
        "checkpointing": checkpointing(config, 4, repeats),
        "accumulation": accumulation(config, 2, 4),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
