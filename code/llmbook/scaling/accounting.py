"""What a training run costs in FLOPs, and what counts as N. Chapter 7.

Scaling laws count compute as ``C = 6 N D``: each of ``D`` tokens meets each of ``N``
weights in a multiply-add (2 FLOPs) forward and twice that backward. Attention adds a
term per token that grows with the context; :func:`llmbook.costs.flops_per_token`
(Chapter 4) counts both, and at the book's small widths the attention term is not
negligible.

What ``N`` is matters just as much. Kaplan et al. (2020) left the embeddings out and
found clean laws in the rest; Hoffmann et al. (2022) counted everything. At GPT-3's size
the embeddings are a rounding error; in a model of a few million parameters they are a
large share, and the two conventions give different exponents on the same runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.costs import count_parameters, flops_per_token
from llmbook.model import GPTConfig


def training_flops(n_params: float, tokens: float) -> float:
    """``6 N D``: the training FLOPs of ``n_params`` parameters on ``tokens`` tokens."""
    if not (n_params > 0 and tokens > 0):
        raise ValueError(
            f"n_params and tokens must be positive, got {n_params}, {tokens}"
        )
    return 6.0 * n_params * tokens


def training_flops_of_config(
    config: GPTConfig, tokens: float, seq_len: int | None = None
) -> float:
    """The training FLOPs of ``GPT(config)`` on ``tokens`` tokens, attention included:
    ``6 N`` over the matrix-multiply weights plus the attention term, per token."""
    if not tokens > 0:
        raise ValueError(f"tokens must be positive, got {tokens}")
    return float(flops_per_token(config, seq_len)) * tokens


def tokens_for_budget(
    config: GPTConfig, flops: float, seq_len: int | None = None
) -> float:
    """The tokens ``GPT(config)`` can train on for ``flops``, attention included: the
    inverse of :func:`training_flops_of_config`, what an IsoFLOP sweep sets each shape's
    run length to."""
    if not flops > 0:
        raise ValueError(f"a FLOP budget must be positive, got {flops}")
    return flops / float(flops_per_token(config, seq_len))


@dataclass(frozen=True)
class ParameterCount:
    """A model's parameters both ways: ``total`` (Hoffmann et al.'s N) and
    ``non_embedding`` (Kaplan et al.'s N, without the token and position tables)."""

    total: int
    non_embedding: int

    @property
    def embedding(self) -> int:
        return self.total - self.non_embedding

    @property
    def embedding_share(self) -> float:
        """The fraction of all parameters that are lookup tables."""
        return self.embedding / self.total

    def n(self, convention: str) -> int:
        """``N`` under ``convention``: ``"hoffmann"`` (all parameters) or ``"kaplan"``
        (no embeddings)."""
        if convention == "hoffmann":
            return self.total
        if convention == "kaplan":
            return self.non_embedding
        raise ValueError(
            f"unknown convention {convention!r}; choose 'hoffmann' or 'kaplan'"
        )


def parameter_count(config: GPTConfig) -> ParameterCount:
    """Both counts of ``GPT(config)``'s parameters, from the shapes alone, by the rule
    of :meth:`llmbook.model.GPT.num_parameters`: the lookup tables are embeddings; an
    untied output head is a real matrix multiply and is not."""
    parts = count_parameters(config)
    total = sum(parts.values())
    tables = parts["token_embedding"] + parts["position_embedding"]
    return ParameterCount(total=total, non_embedding=total - tables)
