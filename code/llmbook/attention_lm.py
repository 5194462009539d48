"""Chapter 3's two trainings, cached: the attention-only language model on the plays' bytes,
and one wide head trained with and without the division by sqrt(d_k).

Both train on random windows of the training split's UTF-8 bytes with AdamW and score the
same validation windows at every check, on one CPU thread (matrices this small gain nothing
from a second). Each is an artifact (:mod:`llmbook.artifacts`): the chapter's first run
trains it, later runs and ``nbval`` read it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from llmbook import data
from llmbook.artifacts import cached_artifact
from llmbook.attention import AttentionOnlyLM, scaled_dot_product_attention
from llmbook.batches import encode_bytes, random_windows

VAL_SEED = 123  # the validation windows: the same at every check of every run


def byte_ids(split: str) -> Tensor:
    """The UTF-8 bytes of a split's cleaned text, as int64 ids (the vocabulary is 256)."""
    return torch.from_numpy(encode_bytes(data.load_split(split)).astype(np.int64))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class AttentionLMRun:
    """The attention-only model's run: its size, the batches, the steps and the seed."""

    block_size: int
    d_model: int
    n_heads: int
    batch_size: int
    lr: float
    steps: int
    seed: int
    checks: int = 4  # validation checks after step 0, evenly spaced


@torch.no_grad()
def window_loss(model: AttentionOnlyLM, ids: Tensor, block_size: int, *,
                batches: int = 20, batch_size: int = 64) -> float:
    """Mean loss over ``batches`` batches of random windows of ``ids``, always the same
    windows (a generator seeded with :data:`VAL_SEED`)."""
    gen = torch.Generator().manual_seed(VAL_SEED)
    device = next(model.parameters()).device
    model.eval()
    losses = [model(*(t.to(device) for t in random_windows(ids, block_size, batch_size,
                                                             gen)))[1].item()
              for _ in range(batches)]
    model.train()
    return sum(losses) / len(losses)


def train_attention_lm(run: AttentionLMRun, *, device: str | torch.device = "cpu"
                       ) -> tuple[AttentionOnlyLM, list[tuple]]:
    """Train ``AttentionOnlyLM`` on the training bytes on ``device`` (or read it from the
    cache); returns the model on ``device``, in training mode, and its log of ``(step,
    validation loss)``."""
    _check_steps(run.steps, run.checks)
    device = torch.device(device)

    def build(out: Path) -> None:
        train_ids, val_ids = byte_ids("train"), byte_ids("val")
        with _one_thread():
            torch.manual_seed(run.seed)
            lm = AttentionOnlyLM(256, run.block_size, run.d_model, run.n_heads).to(device)
            optimizer = torch.optim.AdamW(lm.parameters(), lr=run.lr, weight_decay=0.0)
            batch_gen = torch.Generator().manual_seed(run.seed)
            log = [(0, window_loss(lm, val_ids, run.block_size))]
            for step in range(1, run.steps + 1):
                x, y = random_windows(train_ids, run.block_size, run.batch_size, batch_gen)
                _, loss = lm(x.to(device), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if step % (run.steps // run.checks) == 0:
                    log.append((step, window_loss(lm, val_ids, run.block_size)))
        _save(out, lm, log)

    path = cached_artifact("attention-lm", run, build)
    lm = AttentionOnlyLM(256, run.block_size, run.d_model, run.n_heads)
    log = _load(path, lm)
    return lm.to(device), log


@dataclass(frozen=True)
class ScaleRun:
    """One head of width ``d_k`` trained with and without the scale: the shared settings."""

    d_k: int
    block_size: int
    batch_size: int
    lr: float
    steps: int
    seed: int
    checks: int = 4


def one_head_loss(model: AttentionOnlyLM, idx: Tensor, targets: Tensor,
                  divide: bool) -> tuple[Tensor, Tensor]:
    """``AttentionOnlyLM.forward`` with one head, the division by sqrt(d_k) optional.
    Returns the loss and the mean largest attention weight of queries 8 and later."""
    x = model.embed(idx)  # (B, T, d)
    q, k, v = model.attn.qkv(x).chunk(3, dim=-1)  # one head: (B, T, d_k) each
    scale = 1 / math.sqrt(q.shape[-1]) if divide else 1.0
    out, w = scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                          return_weights=True)
    logits = model.head(x + model.attn.proj(out))
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    return loss, w[:, 8:].max(-1).values.mean()


def scale_training(run: ScaleRun) -> dict[bool, list[tuple]]:
    """The head trained with the scale (key True) and without (False), from the same
    initial weights on the same batches (or read from the cache); each log holds ``(step,
    validation loss, mean largest weight)``."""
    _check_steps(run.steps, run.checks)

    @torch.no_grad()
    def check(model, val_ids, divide):
        gen = torch.Generator().manual_seed(VAL_SEED)
        results = [one_head_loss(model, *random_windows(val_ids, run.block_size, 64, gen),
                                 divide) for _ in range(10)]
        return [sum(r[i].item() for r in results) / len(results) for i in (0, 1)]

    def build(out: Path) -> None:
        train_ids, val_ids = byte_ids("train"), byte_ids("val")
        logs = {}
        with _one_thread():
            for divide in (True, False):
                torch.manual_seed(run.seed)
                model = AttentionOnlyLM(256, run.block_size, run.d_k, 1)
                optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr,
                                              weight_decay=0.0)
                batch_gen = torch.Generator().manual_seed(run.seed)
                log = [(0, *check(model, val_ids, divide))]
                for step in range(1, run.steps + 1):
                    x, y = random_windows(train_ids, run.block_size, run.batch_size,
                                          batch_gen)
                    loss, _ = one_head_loss(model, x, y, divide)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if step % (run.steps // run.checks) == 0:
                        log.append((step, *check(model, val_ids, divide)))
                logs[str(divide)] = log
        (out / "logs.json").write_text(json.dumps(logs, indent=1), encoding="utf-8")

    path = cached_artifact("attention-scale", run, build)
    logs = json.loads((path / "logs.json").read_text(encoding="utf-8"))
    return {divide: [tuple(r) for r in logs[str(divide)]] for divide in (True, False)}


def _check_steps(steps: int, checks: int) -> None:
    if checks < 1 or steps < checks:
        raise ValueError(f"need 1 <= checks <= steps, got steps={steps}, checks={checks}")


def _save(out: Path, model: torch.nn.Module, log: list[tuple]) -> None:
    (out / "log.json").write_text(json.dumps(log), encoding="utf-8")
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
    (out / "model.pt").write_bytes(buffer.getvalue())


def _load(path: Path, model: torch.nn.Module) -> list[tuple]:
    model.load_state_dict(torch.load(path / "model.pt", weights_only=True))
    return [tuple(r) for r in json.loads((path / "log.json").read_text(encoding="utf-8"))]
