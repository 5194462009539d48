"""The parts of a transformer block other than attention: norms, MLPs, positional encodings.

Chapter 4 builds a GPT from these parts; :mod:`llmbook.attention` (Chapter 3) supplies the
attention layer and :mod:`llmbook.model` assembles everything. Each part is written from its
defining equation, and the tests check it against the PyTorch module that does the same job
(``torch.nn.LayerNorm``, ``torch.nn.RMSNorm``) or against an independent formulation (RoPE
as complex multiplication).

Shapes: ``B`` batch, ``T`` sequence length, ``C`` model width (``d_model``), ``H`` heads,
``D`` head width.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# -----------------------------------------------------------------------------------------
# Normalisation


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> Tensor:
    """Layer normalisation (Ba et al., 2016) written out, as in GPT-2. Chapter 4 explains.

    Each position's vector is shifted to zero mean and scaled to unit variance over its
    ``C`` features, then given a learned per-feature gain and (optionally) bias:

        y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias

    ``var`` is the biased (divide by ``C``) variance, as in the paper and in
    ``torch.nn.LayerNorm``. The statistics are computed in at least float32, so the result
    holds up in bfloat16.
    """
    xf = x.to(torch.promote_types(x.dtype, torch.float32))  # (B, T, C)
    mean = xf.mean(dim=-1, keepdim=True)  # (B, T, 1)
    var = xf.var(dim=-1, keepdim=True, unbiased=False)  # (B, T, 1)
    x_hat = (xf - mean) * torch.rsqrt(var + eps)  # (B, T, C): zero mean, unit variance
    y = x_hat.type_as(x) * weight
    return y + bias if bias is not None else y


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Root-mean-square normalisation (Zhang and Sennrich, 2019) written out, as in Llama.

    LayerNorm without the mean (Chapter 4): the vector is divided by its root mean square
    and given a learned gain,

        y = x / sqrt(mean(x^2) + eps) * weight

    one reduction instead of two, and no bias. Re-centring turned out not to matter for
    transformers, and dropping it saves time.
    """
    xf = x.to(torch.promote_types(x.dtype, torch.float32))  # (B, T, C)
    rms_inv = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)  # (B, T, 1)
    return (xf * rms_inv).type_as(x) * weight


class LayerNorm(nn.Module):
    """LayerNorm as a module: a gain (and bias) per feature around :func:`layer_norm`.

    ``fused=True`` (the default) runs the same equation as
    ``torch.nn.functional.layer_norm``, one kernel that makes a single pass over the
    activations, where the written-out version launches seven and reads them repeatedly; on
    a small model that is about a tenth of a training step (``benchmarks/model.py``). The
    tests check that the two agree.
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True, *,
                 fused: bool = True):
        super().__init__()
        self.eps = eps
        self.fused = fused
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        return layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={bias}, fused={self.fused}"


class RMSNorm(nn.Module):
    """RMSNorm as a module: a gain per feature around :func:`rms_norm`; ``fused`` as for
    :class:`LayerNorm` (``torch.nn.functional.rms_norm``)."""

    def __init__(self, dim: int, eps: float = 1e-5, *, fused: bool = True):
        super().__init__()
        self.eps = eps
        self.fused = fused
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, fused={self.fused}"


# -----------------------------------------------------------------------------------------
# Feed-forward networks

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact GELU
    # GPT-2's tanh approximation of GELU (within about 1e-3 of it): to load its weights
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
}
GATED_ACTIVATIONS = {
    "swiglu": F.silu,  # SiLU(x) = x * sigmoid(x), also called Swish
    "geglu": F.gelu,
}


class MLP(nn.Module):
    """GPT-2's position-wise feed-forward network: expand, nonlinearity, project back.

        MLP(x) = act(x W_fc + b_fc) W_proj + b_proj,   W_fc: (C, d_ff),  W_proj: (d_ff, C)

    ``proj`` writes into the residual stream, so :class:`llmbook.model.GPT` gives it the
    scaled initialisation (Chapter 4).
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", *,
                 bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r} for MLP; "
                f"choose one of {sorted(ACTIVATIONS)}"
            )
        self.act = ACTIVATIONS[activation]
        self.fc = nn.Linear(d_model, d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))  # (B, T, C) via (B, T, d_ff)


class GatedMLP(nn.Module):
    """A gated feed-forward network (Shazeer, 2020), SwiGLU in Llama. Chapter 4 explains.

        GatedMLP(x) = (act(x W_gate) * (x W_up)) W_proj

    One projection decides, per hidden unit, how much of the other passes. With three
    matrices instead of two, models use about 2/3 of the plain MLP's hidden width to keep
    the parameter count (:attr:`llmbook.model.GPTConfig.d_ff`). ``W_gate`` and ``W_up`` are
    stored as one ``(C, 2 d_ff)`` matrix, so that the two products are one matrix multiply.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "swiglu", *,
                 bias: bool = False):
        super().__init__()
        if activation not in GATED_ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r} for GatedMLP; "
                f"choose one of {sorted(GATED_ACTIVATIONS)}"
            )
        self.act = GATED_ACTIVATIONS[activation]
        self.fc = nn.Linear(d_model, 2 * d_ff, bias=bias)  # [W_gate | W_up]
        self.proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)  # (B, T, d_ff) each
        return self.proj(self.act(gate) * up)  # (B, T, C)


# -----------------------------------------------------------------------------------------
# Positional encodings


def _check_positions(start: int, seq_len: int, max_len: int) -> None:
    if start < 0 or start + seq_len > max_len:
        raise ValueError(
            f"positions {start}..{start + seq_len - 1} are outside the model's context of "
            f"{max_len} positions; crop the input to its last {max_len} tokens "
            "(llmbook.generate does this) or build the model with a larger block_size"
        )


class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per position, added to the token embedding (GPT-1, GPT-2).
    Chapter 4.

    Simple and flexible, but it knows nothing of positions past ``max_len``: never trained.
    """

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.zeros(max_len, dim))

    def forward(self, seq_len: int, start: int = 0) -> Tensor:
        _check_positions(start, seq_len, self.max_len)
        return self.weight[start : start + seq_len]  # (T, C)


def sinusoidal_table(max_len: int, dim: int, base: float = 10000.0) -> Tensor:
    """The fixed encodings of Vaswani et al. (2017), a ``(max_len, dim)`` float32 table:

        PE[p, 2i] = sin(p / base^(2i/dim)),   PE[p, 2i+1] = cos(p / base^(2i/dim))

    Each pair of features is a clock turning at its own rate, from one radian per position
    down to one turn in ``2 pi base`` positions. An offset of k positions turns every clock
    by a fixed angle, so relative position is a linear function of the encodings.
    """
    if dim % 2:
        raise ValueError(f"sinusoids come in sin/cos pairs, so dim must be even, got {dim}")
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    angles = (torch.arange(max_len, dtype=torch.float64)[:, None]
              * inv_freq)  # (max_len, dim/2)
    table = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (max_len, dim/2, 2)
    return table.flatten(1).float()  # (max_len, dim): sin, cos, sin, cos, ...


class SinusoidalPositionalEncoding(nn.Module):
    """The original transformer's fixed sinusoids, added to the token embedding. Chapter 4.

    No parameters: the table is a non-persistent buffer, rebuilt from the formula rather
    than stored in checkpoints.
    """

    def __init__(self, max_len: int, dim: int, base: float = 10000.0):
        super().__init__()
        self.max_len = max_len
        self.register_buffer("table", sinusoidal_table(max_len, dim, base),
                             persistent=False)

    def forward(self, seq_len: int, start: int = 0) -> Tensor:
        _check_positions(start, seq_len, self.max_len)
        return self.table[start : start + seq_len]  # (T, C)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding, RoPE (Su et al., 2021), as in Llama. Chapter 4 explains.

    Instead of adding a position vector to the residual stream, RoPE rotates every query and
    key inside attention. The ``D`` features of a head form ``D/2`` pairs; pair ``i`` of the
    vector at position ``m`` is turned by the angle ``m theta_i``,
    ``theta_i = base^(-2i/D)``. Turning by ``m theta`` and then back by ``n theta`` is a
    turn by ``(m - n) theta``, so the score of the query at ``m`` and the key at ``n``
    depends only on the offset ``m - n``.

    Pair ``i`` is features ``(i, i + D/2)``, the "rotate half" layout of GPT-NeoX and
    Hugging Face's Llama. The paper pairs neighbours ``(2i, 2i+1)``; the two layouts differ
    by a fixed permutation of a head's features, which the learned projections absorb: the
    same model.

    An instance is the ``rotary`` callable that
    :class:`llmbook.attention.CausalSelfAttention` applies to its queries and keys:
    ``rotary(t, start)`` with ``t`` of shape ``(B, H, T, D)`` holding positions
    ``start .. start + T - 1``. The cos/sin tables are float32 buffers: run reduced
    precision under ``torch.autocast``, which leaves buffers in float32, rather than casting
    the model with ``.to(torch.bfloat16)``, which would round the angles.
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(
                f"RoPE rotates pairs of features, so head_dim must be even, got {head_dim}"
            )
        self.head_dim = head_dim
        self.max_len = max_len
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
        inv_freq = base**-exponents  # (D/2,): theta_i
        positions = torch.arange(max_len, dtype=torch.float64)
        angles = positions[:, None] * inv_freq  # (max_len, D/2): m theta_i
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, t: Tensor, start: int = 0) -> Tensor:
        seq_len = t.shape[-2]
        _check_positions(start, seq_len, self.max_len)
        # (T, D/2): cos(m theta_i) for each position m
        cos = self.cos[start : start + seq_len]
        sin = self.sin[start : start + seq_len]
        # (B, H, T, D/2) each: the two coordinates of every pair
        t1, t2 = t.chunk(2, dim=-1)
        rotated = torch.cat([t1 * cos - t2 * sin,
                             t1 * sin + t2 * cos], dim=-1)  # (B, H, T, D)
        return rotated.type_as(t)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_len={self.max_len}"
