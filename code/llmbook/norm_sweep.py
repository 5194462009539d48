"""Pre-norm against post-norm: the same small model trained briefly with the norm on
either side of the residual addition, at a safe and a high learning rate, with and
without warm-up. Chapter 4.

The training loop is the plainest one that works (AdamW, linear warm-up, constant rate),
so that the experiment shows the norm's placement and nothing else; Chapter 5's
``Trainer`` comes later. The whole sweep is one cached artifact: its final losses, and
the weights of the pre-norm model trained at the high rate without warm-up, which the
chapter samples from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from llmbook.artifacts import cached_artifact
from llmbook.batches import random_windows
from llmbook.model import GPT, GPTConfig

POSITIONS = ("pre", "post")


def random_batches(ids: Tensor, block_size: int, batch_size: int, steps: int, seed: int,
                   device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
    """``steps`` batches of random windows (inputs and next-token targets), drawn by a
    generator seeded with ``seed``: the same batches on every call."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = random_windows(ids, block_size, batch_size, g)
        yield x.to(device), y.to(device)


def train_briefly(model: GPT, batches, lr: float, warmup: int = 0) -> list[float]:
    """AdamW (no weight decay) over ``batches``, the rate rising linearly over ``warmup``
    steps and then constant; returns the training loss at every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95),
                                  weight_decay=0.0)
    losses = []
    for step, (x, y) in enumerate(batches):
        for group in optimizer.param_groups:  # linear warm-up, then constant
            group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@dataclass(frozen=True)
class NormSweepSpec:
    """The key of a sweep: the model (its ``norm_position`` is set per run), the rates,
    the warm-up, the batches and the data they are drawn from."""

    config: GPTConfig
    lrs: tuple[float, ...]
    warmup: int
    steps: int
    batch_size: int
    seed: int
    data: str  # SHA-256 of the token ids


@dataclass
class NormSweep:
    """``final[(position, lr, warmup)]``: the mean training loss of the last 10 steps;
    ``model``: the pre-norm model trained at the highest rate without warm-up."""

    final: dict[tuple[str, float, int], float]
    model: GPT
    path: Path


def norm_sweep(config: GPTConfig, ids: Tensor, *, lrs: tuple[float, ...], warmup: int,
               steps: int, batch_size: int, seed: int,
               device: torch.device | str = "cpu") -> NormSweep:
    """Train ``GPT(config)`` with the norm before and after the residual addition, at each
    rate in ``lrs``, without warm-up and with ``warmup`` steps of it, every run from the
    same initial weights (``seed``) on the same batches; cached."""
    if not lrs or min(lrs) <= 0:
        raise ValueError(f"lrs must be positive learning rates, got {lrs}")
    if not 0 < warmup <= steps or steps < 10:
        raise ValueError(f"need 10 <= steps and 0 < warmup <= steps, got steps={steps}, "
                         f"warmup={warmup}")
    ids = torch.as_tensor(ids, dtype=torch.int64)
    digest = hashlib.sha256(ids.numpy().tobytes()).hexdigest()
    spec = NormSweepSpec(config, tuple(float(lr) for lr in lrs), warmup, steps, batch_size,
                         seed, digest)
    keep = ("pre", max(spec.lrs), 0)

    def build(out: Path) -> None:
        records, kept = [], None
        for position in POSITIONS:
            run_config = dataclasses.replace(config, norm_position=position)
            for lr in spec.lrs:
                for w in (0, warmup):
                    torch.manual_seed(seed)
                    model = GPT(run_config).to(device)
                    batches = random_batches(ids, config.block_size, batch_size, steps,
                                             seed, device)
                    losses = train_briefly(model, batches, lr, w)
                    records.append({"position": position, "lr": lr, "warmup": w,
                                    "loss": float(np.mean(losses[-10:]))})
                    if (position, lr, w) == keep:
                        kept = model
        (out / "final.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
        buffer = io.BytesIO()
        torch.save({k: v.cpu() for k, v in kept.state_dict().items()}, buffer)
        (out / "model.pt").write_bytes(buffer.getvalue())

    path = cached_artifact("norm-sweep", spec, build)
    records = json.loads((path / "final.json").read_text(encoding="utf-8"))
    final = {(r["position"], r["lr"], r["warmup"]): r["loss"] for r in records}
    model = GPT(dataclasses.replace(config, norm_position="pre"))
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu",
                                     weights_only=True))
    return NormSweep(final, model.to(device), path)
