"""Scoring held-out text: every token once, in nats per token and bits per character.
Chapter 5."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn

from llmbook import data
from llmbook.batches import eval_windows, gather_windows
from llmbook.objectives import IGNORE_INDEX, LN2
from llmbook.train.runtime import autocast

if TYPE_CHECKING:
    from llmbook.train.loop import Trainer


@dataclass
class TokenSplit:
    """A token file and the number of characters of the text it encodes (for bits per
    character)."""

    tokens: data.TokenFile
    n_chars: int
    name: str = "split"

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, data.TokenFile):
            raise TypeError(f"tokens must be a llmbook.data.TokenFile, "
                            f"got {type(self.tokens).__name__}")
        if self.n_chars < 1:
            raise ValueError(f"n_chars must be positive, got {self.n_chars}")

    @property
    def tokens_per_char(self) -> float:
        """Scored tokens per character of text (every token but the first is a target
        once)."""
        return max(1, len(self.tokens) - 1) / self.n_chars


@dataclass(frozen=True)
class EvalResult:
    """The loss of a model on (part of) a split, in nats per token and bits per
    character."""

    split: str
    tokens: int  # targets scored
    nats_per_token: float
    bits_per_char: float
    complete: bool  # True when every token of the split was scored


@torch.no_grad()
def evaluate(model: nn.Module, split: TokenSplit, *, batch_size: int,
             max_tokens: int | None = None,
             autocast_dtype: torch.dtype | None = None) -> EvalResult:
    """Score ``split`` with ``model`` in eval mode (no dropout), window by window.

    With ``max_tokens``, only that many tokens' worth of windows, spread evenly over the
    split, are scored: a quick estimate during training, whose bits per character scale the
    mean loss by the split's tokens per character. Without, every token after the first is
    scored once and the result is exact.
    """
    T = model.config.block_size
    device = next(model.parameters()).device
    starts, skips = eval_windows(len(split.tokens), T)
    complete = max_tokens is None or max_tokens >= len(starts) * T
    if not complete:
        picks = np.linspace(0, len(starts) - 1, num=max(1, max_tokens // T))
        keep = np.unique(picks.round().astype(np.int64))
        starts, skips = starts[keep], skips[keep]
    was_training = model.training
    model.eval()
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for i in range(0, len(starts), batch_size):
            x, y = gather_windows(split.tokens.ids, starts[i : i + batch_size], T)
            skip = torch.from_numpy(skips[i : i + batch_size])[:, None]
            # targets the neighbouring window already scored
            y = y.masked_fill(torch.arange(T)[None, :] < skip, IGNORE_INDEX)
            n = int((y != IGNORE_INDEX).sum())
            with autocast(device.type, autocast_dtype):
                _, loss = model(x.to(device), y.to(device))
            total_nats += loss.double() * n
            count += n
    finally:
        model.train(was_training)
    nats = total_nats.item() / count
    return EvalResult(split.name, count, nats, nats * split.tokens_per_char / LN2, complete)


class TextEvaluator:
    """The pretraining evaluator: the loss on ``eval_tokens`` of the training and of the
    held-out text, a quick estimate at each evaluation interval (the final scores read all
    of it). Returns ``train_loss``, ``train_bpc``, ``val_loss`` and ``val_bpc``."""

    def __init__(self, train: TokenSplit, val: TokenSplit) -> None:
        self.splits = {"train": train, "val": val}

    def __call__(self, trainer: Trainer) -> dict[str, float]:
        record = {}
        for name, split in self.splits.items():
            result = trainer.evaluate(split, trainer.settings.eval_tokens)
            record |= {f"{name}_loss": result.nats_per_token,
                       f"{name}_bpc": result.bits_per_char}
        return record
