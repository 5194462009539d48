"""Benchmark for llmbook.train and llmbook.optim (Chapter 5): the cost of a training step on a
CPU, AdamW from scratch against PyTorch's, and what our training loop adds on top of the steps.
Prints one JSON object.

1. **Step throughput**: tokens per second of a full training step (forward, backward, clipping,
   AdamW) of the cpu profile's model at the profile's batch size, timed through
   :meth:`Trainer.train_step`, and the same step written inline with nothing else (``bare``):
   their ratio is the step-level overhead of the Trainer (schedule, batch gathering,
   bookkeeping).
2. **Optimizer step**: the time of one AdamW update of that model's parameters with our
   :class:`AdamW` (a loop of small operations per tensor), PyTorch's multi-tensor version and
   its fused kernel; all three compute the same update (the unit tests prove it), so the gain
   is pure implementation.
3. **Loop overhead**: the seconds one evaluation, one log record and one checkpoint cost, and
   the fraction of training time they add at the profile's intervals (an evaluation every
   ``eval_interval`` steps, a record every ``log_interval``, a checkpoint at every evaluation
   as ``--checkpoint-interval`` would write them), and the same fraction measured directly in a
   short :meth:`Trainer.fit` with those costs.

The data are random token ids in a temporary token file (the step's cost does not depend on the
text). Usage: ``python benchmarks/train.py [--quick] [--threads N] [--out results.json]``;
``--quick`` runs in under a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from llmbook import data
from llmbook.artifacts import atomic_write_text
from llmbook.optim import AdamW, clip_grad_norm
from llmbook.profiles import get_profile
from llmbook.measure import median_seconds
from llmbook.train import TokenSplit, TrainConfig, Trainer


def random_split(folder: Path, name: str, n_tokens: int, vocab_size: int) -> TokenSplit:
    ids = np.random.default_rng(0).integers(0, vocab_size, n_tokens)
    path = data.write_token_file(folder / f"{name}.bin", ids, vocab_size=vocab_size,
                                 tokenizer="random")
    return TokenSplit(data.TokenFile(path), n_chars=3 * n_tokens, name=name)


def step_throughput(config: TrainConfig, splits: dict, steps: int) -> dict:
    trainer = Trainer.for_text(config, splits["train"], splits["val"])
    model, optimizer, s = trainer.model, trainer.optimizer, config.settings
    x, y = trainer.batches.next_batch()

    def bare_step() -> None:  # the same arithmetic with none of the loop around it
        _, loss = model(x, y)
        loss.backward()
        clip_grad_norm(model.parameters(), s.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up: allocator, optimizer state
        trainer.train_step()
        bare_step()
    trainer_s, bare_s = [], []
    for r in range(steps):  # alternate, so that load from other processes hits both alike
        pair = [(trainer_s, trainer.train_step), (bare_s, bare_step)]
        for times, fn in pair if r % 2 == 0 else reversed(pair):
            times.append(median_seconds(fn, repeats=1))
    step_s, bare = statistics.median(trainer_s), statistics.median(bare_s)
    return {
        "seconds_per_step": round(step_s, 4),
        "tokens_per_s": round(config.tokens_per_step / step_s, 1),
        "bare_seconds_per_step": round(bare, 4),
        "trainer_step_overhead": round(step_s / bare - 1, 3),
        "steps_timed": steps,
    }


def optimizer_step(config: TrainConfig, repeats: int) -> dict:
    torch.manual_seed(0)
    from llmbook.model import GPT

    model = GPT(config.model)
    grads = [torch.randn_like(p) * 1e-2 for p in model.parameters()]
    hyper = dict(lr=1e-3, weight_decay=0.1)
    makers = {
        "ours": lambda params: AdamW(params, **hyper),
        "torch_foreach": lambda params: torch.optim.AdamW(params, **hyper, foreach=True),
        "torch_fused": lambda params: torch.optim.AdamW(params, **hyper, fused=True),
    }
    ms = {}
    for name, make in makers.items():
        params = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
        for p, g in zip(params, grads):
            p.grad = g
        opt = make(params)
        opt.step()  # creates the state
        ms[name] = 1000 * median_seconds(opt.step, repeats=repeats)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        **{f"{name}_ms": round(v, 3) for name, v in ms.items()},
        "fused_speedup_over_ours": round(ms["ours"] / ms["torch_fused"], 2),
    }


def loop_overhead(config: TrainConfig, splits: dict, seconds_per_step: float, repeats: int,
                  folder: Path) -> dict:
    s = config.settings
    trainer = Trainer.for_text(config, splits["train"], splits["val"], log_path=folder / "log.jsonl")
    trainer.train_step()
    eval_s = median_seconds(trainer._eval_record, repeats=repeats)
    checkpoint_s = median_seconds(lambda: trainer.save_checkpoint(folder / "ckpt.pt"), repeats=repeats)
    record = {"kind": "train", "step": 1, "loss": 1.0, "lr": 1e-3, "grad_norm": 1.0,
              "tokens_per_s": 1.0}
    log_s = median_seconds(lambda: trainer._append(dict(record)), repeats=50)
    per_step = {
        "eval": eval_s / s.eval_interval,
        "log": log_s / s.log_interval,
        "checkpoint": checkpoint_s / s.eval_interval,
    }
    fractions = {name: cost / seconds_per_step for name, cost in per_step.items()}
    return {
        "eval_interval": s.eval_interval, "eval_tokens_per_split": s.eval_tokens,
        "log_interval": s.log_interval,
        "seconds_per_eval": round(eval_s, 4),
        "seconds_per_checkpoint": round(checkpoint_s, 4),
        "checkpoint_megabytes": round((folder / "ckpt.pt").stat().st_size / 1e6, 2),
        "seconds_per_log_record": round(log_s, 6),
        "overhead_fraction": {name: round(f, 4) for name, f in fractions.items()}
        | {"total": round(sum(fractions.values()), 4)},
    }


def measured_fit(config: TrainConfig, splits: dict, steps: int, folder: Path) -> dict:
    """A short real run with the same costs: every eval_interval steps an evaluation and a
    checkpoint."""
    s = config.settings
    interval = max(1, steps // 2)
    short = dataclasses.replace(config, settings=dataclasses.replace(
        s, steps=steps, warmup_steps=1, eval_interval=interval,
        log_interval=max(1, min(s.log_interval, interval))))
    trainer = Trainer.for_text(short, splits["train"], splits["val"], log_path=folder / "fit.jsonl")
    trainer.fit(checkpoint_path=folder / "fit.pt", checkpoint_interval=interval)
    t = trainer.timings
    overhead = (t["eval"] + t["log"] + t["checkpoint"]) / t["train"]
    # Rescale the evaluations and checkpoints of this short run to the profile's interval.
    scaled = (t["eval"] + t["checkpoint"]) * interval / s.eval_interval + t["log"]
    return {"steps": steps, "eval_interval": interval,
            "timings_s": {k: round(v, 3) for k, v in t.items()},
            "overhead_fraction": round(overhead, 4),
            "overhead_fraction_at_profile_intervals": round(scaled / t["train"], 4)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, under a minute")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    profile = get_profile("cpu")
    config = TrainConfig.for_profile(profile, vocab_size=profile.tokenizer.vocab_size,
                                     data="random")
    steps, repeats, fit_steps = (6, 3, 6) if args.quick else (20, 7, 40)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vocab = config.model.vocab_size
        splits = {"train": random_split(folder, "train", 200_000, vocab),
                  "val": random_split(folder, "val", 50_000, vocab)}
        step = step_throughput(config, splits, steps)
        optim = optimizer_step(config, repeats * 3)
        loop = loop_overhead(config, splits, step["seconds_per_step"], repeats, folder)
        fit = measured_fit(config, splits, fit_steps, folder)

    s = config.settings
    result = {
        "benchmark": "train",
        "quick": args.quick,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "model": dict(preset=profile.model.preset, n_layer=config.model.n_layer,
                      d_model=config.model.d_model, block_size=config.model.block_size,
                      vocab_size=vocab),
        "batch": dict(batch_size=s.batch_size, grad_accum=s.grad_accum,
                      tokens_per_step=config.tokens_per_step, optimizer=s.optimizer),
        "step": step,
        "optimizer_step": optim,
        "loop_overhead": loop,
        "measured_fit": fit,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return result


if __name__ == "__main__":
    main()
