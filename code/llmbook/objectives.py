"""Objectives: what a model is trained to minimise, and the units its loss is reported in.
Chapter 5 builds the language-modelling loss; Chapter 8 builds post-training on the same
pieces.

- :func:`cross_entropy`: next-token cross-entropy in nats per token, and
  :func:`bits_per_char`, which compares models whatever their tokenizer.
- :func:`token_log_probs`, :func:`masked_sum`, :func:`masked_mean`: per-token
  log-probabilities of given targets and the reductions over the tokens that count, the
  pieces of supervised fine-tuning, DPO and RL.
- :class:`LanguageModelObjective`: the training objective the loop
  (:class:`llmbook.train.Trainer`) calls on each micro-batch.

An objective is a callable ``objective(model, batch) -> (loss, metrics)`` whose loss is a
mean over ``objective.count(batch)`` units (target tokens, preference pairs, ...). The loop
weights each micro-batch's mean by its count, so that micro-batches of uneven size give
exactly the gradient of the whole batch, and an empty micro-batch adds nothing.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

LN2 = math.log(2.0)
IGNORE_INDEX = -100  # a target that is not scored (PyTorch's convention)


def cross_entropy(logits: Tensor, targets: Tensor,
                  ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The mean negative log-likelihood of ``targets`` under ``softmax(logits)``, in nats
    per token.

    For logits ``z`` over the vocabulary and the true next token ``y`` the loss is
    ``-log softmax(z)_y = logsumexp(z) - z_y``: the log of the normaliser minus the true
    token's logit. ``logsumexp`` subtracts the largest logit before exponentiating, so
    nothing overflows. Positions whose target is ``ignore_index`` are left out of the mean,
    as in ``torch.nn.functional.cross_entropy``.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must have the shape of targets "
                         f"{tuple(targets.shape)} plus a vocabulary dimension")
    z = logits.float().reshape(-1, logits.shape[-1])  # (N, V)
    y = targets.reshape(-1)  # (N,)
    keep = y != ignore_index
    log_normaliser = torch.logsumexp(z, dim=-1)  # (N,)
    true_logit = z.gather(1, y.clamp(min=0)[:, None]).squeeze(1)  # (N,); ignored rows: id 0
    return (log_normaliser - true_logit)[keep].mean()


def bits_per_char(total_nats: float, n_chars: int) -> float:
    """Bits per character: the loss of a whole text in bits (divide by ln 2), spread over
    its characters. A byte-level and a BPE model of the same text pay for the same
    characters, so their bits per character compare even though their tokens do not."""
    if n_chars < 1:
        raise ValueError(f"n_chars must be positive, got {n_chars}")
    return total_nats / LN2 / n_chars


def token_log_probs(logits: Tensor, targets: Tensor,
                    ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``log p(targets[b, t])`` under ``softmax(logits[b, t])``: logits ``(B, T, V)``,
    targets ``(B, T)`` -> ``(B, T)`` in float32, 0 where the target is ``ignore_index``.

    The log-probability of a whole response is the sum over its tokens (DPO, RL); the
    negative mean over the scored tokens is :func:`cross_entropy`.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must have the shape of targets "
                         f"{tuple(targets.shape)} plus a vocabulary dimension")
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    keep = targets != ignore_index
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * keep


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None,
               normaliser: float = 1.0) -> Tensor:
    """``sum(values * mask) / normaliser`` over ``dim`` (all elements when None).

    Dividing by a constant, not by the number of unmasked elements, weights every token the
    same whatever the length of its sequence (the "constant normaliser" of Dr. GRPO).
    """
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must "
                         "have the same shape")
    if not normaliser > 0:
        raise ValueError(f"normaliser must be positive, got {normaliser}")
    total = (values * mask).sum() if dim is None else (values * mask).sum(dim)
    return total / normaliser


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """The mean of ``values`` where ``mask`` is 1, over ``dim`` (all elements when None).
    Nothing unmasked gives 0, never NaN: an empty micro-batch must not poison a step."""
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must "
                         "have the same shape")
    mask = mask.to(values.dtype)
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


class Objective(Protocol):
    """What the training loop needs of an objective (see the module docstring)."""

    def __call__(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        ...

    def count(self, batch: Any) -> int:
        ...


class LanguageModelObjective:
    """Next-token prediction on ``(inputs, targets)`` batches: the model's mean
    cross-entropy over the targets that are not ``IGNORE_INDEX`` (Chapter 5; masked targets
    are how supervised fine-tuning trains on the answers only, Chapter 8)."""

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor]
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        logits, _ = model(x)  # (B, T, V)
        # The sum over scored targets over their count: bit for bit the mean of
        # F.cross_entropy, and 0 rather than NaN when nothing is scored.
        total = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(),
                                ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (y != IGNORE_INDEX).sum().clamp(min=1), {}

    def count(self, batch: tuple[Tensor, Tensor]) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())
