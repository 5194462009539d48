"""A reward model: the pretrained GPT with a scalar head. Chapter 8.

It reads the final hidden state at the last real token of a (prompt, answer) sequence,
the one position that has attended to all of it, and maps it to one number. Trained with
:func:`llmbook.align.losses.bradley_terry_loss` on preference pairs, the number is a
score whose *differences* are log-odds of preference (adding a constant changes
nothing).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


class RewardModel(nn.Module):
    """``RewardModel(gpt)(idx, mask)``: ``(B, T)`` ids and a ``(B, T)`` mask of real
    tokens, padding on the right -> ``(B,)`` scores. The GPT's output head is not
    used."""

    def __init__(self, gpt: nn.Module):
        super().__init__()
        self.gpt = gpt
        self.head = nn.Linear(gpt.config.d_model, 1)
        nn.init.zeros_(self.head.weight)  # every answer starts with the same score, 0
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: Tensor, mask: Tensor) -> Tensor:
        if mask.shape != idx.shape:
            raise ValueError(
                f"mask must have the shape of idx {tuple(idx.shape)}, "
                f"got {tuple(mask.shape)}"
            )
        mask = mask.bool()
        lengths = mask.sum(1)  # (B,)
        if (lengths == 0).any():
            raise ValueError(
                "every sequence needs at least one real token (a row of the "
                "mask is all zeros)"
            )
        positions = torch.arange(idx.shape[1], device=idx.device)
        if not torch.equal(mask, positions < lengths.unsqueeze(1)):
            raise ValueError(
                "padding must be on the right: each row of the mask is ones then zeros"
            )
        hidden = self.gpt.hidden_states(
            idx
        )  # (B, T, C); causal, so padding after is unseen
        last = hidden[
            torch.arange(idx.shape[0], device=idx.device), lengths - 1
        ]  # (B, C)
        return self.head(last).squeeze(-1)  # (B,)
