"""Flash-style tiled attention, and what attention costs (Chapter 3).

1. :func:`tiled_attention`, FlashAttention-style: an online softmax over blocks of keys
   that never materialises the T x T score matrix, with a hand-written backward pass
   that recomputes the scores block by block. It computes what
   :func:`llmbook.attention.scaled_dot_product_attention` computes (the tests check).
2. What each implementation costs in time and memory (:func:`measure_attention_cost`,
   with the timers of :mod:`llmbook.measure`), for the chapter's figures and
   ``benchmarks/attention.py``.

Lines stay within 88 characters: the book prints these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from llmbook.attention import _LOW_PRECISION, _check_qkv, scaled_dot_product_attention
from llmbook.measure import best_seconds, peak_memory_bytes

# --------------------------------------------------------------------------------------
# 1. Flash-style tiled attention


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half precision accumulates in float32, as FlashAttention does."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _block_mask(r0: int, r1: int, c0: int, c1: int, device) -> Tensor | None:
    """Causal mask (True = hidden) of the score block of queries r0:r1 and keys c0:c1,
    or None when the whole block is visible."""
    if c1 - 1 <= r0:  # the block's last key is at or before its first query
        return None
    rows = torch.arange(r0, r1, device=device).unsqueeze(1)
    cols = torch.arange(c0, c1, device=device).unsqueeze(0)
    return cols > rows


def _tiled_forward(q: Tensor, k: Tensor, v: Tensor, scale: float, is_causal: bool,
                   block_q: int, block_k: int) -> tuple[Tensor, Tensor]:
    """Forward pass of :func:`tiled_attention`: the output, and the log-sum-exp of each
    query's scores (all the backward pass needs to rebuild the softmax).

    For each block of queries, walk over the blocks of keys keeping per query the
    running maximum ``m`` of its scores, the running sum ``l`` of ``exp(score - m)``
    and the running weighted sum ``acc`` of values; when a block raises the maximum,
    rescale the old sums by ``exp(m_old - m_new)`` (Chapter 3, the online softmax).
    Only a ``block_q x block_k`` piece of the score matrix ever exists.
    """
    T_q, T_k = q.shape[-2], k.shape[-2]
    acc_dtype = _accumulation_dtype(q.dtype)
    opts = dict(dtype=acc_dtype, device=q.device)
    out = torch.empty(q.shape[:-1] + v.shape[-1:], dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], **opts)  # (..., T_q)
    for r0 in range(0, T_q, block_q):
        r1 = min(r0 + block_q, T_q)
        q_blk = q[..., r0:r1, :]  # (..., bq, d)
        m = torch.full(q_blk.shape[:-1], float("-inf"), **opts)  # (..., bq)
        l = torch.zeros_like(m)  # (..., bq)
        acc = torch.zeros(q_blk.shape[:-1] + v.shape[-1:], **opts)  # (..., bq, d_v)
        # causal: keys after the block's last query are never seen, skip them
        k_end = min(T_k, r1) if is_causal else T_k
        for c0 in range(0, k_end, block_k):
            c1 = min(c0 + block_k, k_end)
            s = (q_blk @ k[..., c0:c1, :].transpose(-2, -1)).to(acc_dtype) * scale
            hidden = _block_mask(r0, r1, c0, c1, q.device) if is_causal else None
            if hidden is not None:
                s = s.masked_fill(hidden, float("-inf"))  # (..., bq, bk)
            m_new = torch.maximum(m, s.amax(dim=-1))
            # a row with no visible key yet keeps m = -inf; shift it by 0 instead
            m_safe = m_new.masked_fill(m_new == float("-inf"), 0.0)
            p = torch.exp(s - m_safe.unsqueeze(-1))  # unnormalised probabilities
            correction = torch.exp(m - m_safe)  # rescales sums under the old maximum
            l = l * correction + p.sum(dim=-1)
            pv = (p.to(v.dtype) @ v[..., c0:c1, :]).to(acc_dtype)  # (..., bq, d_v)
            acc = acc * correction.unsqueeze(-1) + pv
            m = m_new
        # rows with no visible key (l = 0) get zeros and lse = -inf
        out[..., r0:r1, :] = (acc / l.clamp_min(1e-30).unsqueeze(-1)).to(q.dtype)
        lse[..., r0:r1] = m + torch.log(l)
    return out, lse


def _tiled_backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                    grad_out: Tensor, scale: float, is_causal: bool, block_q: int,
                    block_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Backward pass of :func:`tiled_attention` (FlashAttention-2's algorithm).

    With ``P = softmax(S)``, ``O = P V`` and upstream gradient ``dO``:
    ``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - D)`` with ``D = rowsum(dO * O)``
    (Chapter 3 derives it). Each block of ``P`` is recomputed from the saved
    log-sum-exp as ``exp(S - lse)``, so the backward pass, like the forward, holds one
    block at a time.
    """
    T_q, T_k = q.shape[-2], k.shape[-2]
    acc_dtype = _accumulation_dtype(q.dtype)
    opts = dict(dtype=acc_dtype, device=q.device)
    D = (grad_out.to(acc_dtype) * out.to(acc_dtype)).sum(dim=-1)  # (..., T_q)
    # rows with no visible key: lse = -inf; +inf instead makes exp(S - lse) = 0
    lse = lse.masked_fill(lse == float("-inf"), float("inf"))
    dq = torch.zeros(q.shape, **opts)
    dk = torch.zeros(k.shape, **opts)
    dv = torch.zeros(v.shape, **opts)
    for c0 in range(0, T_k, block_k):
        c1 = min(c0 + block_k, T_k)
        k_blk, v_blk = k[..., c0:c1, :], v[..., c0:c1, :]  # (..., bk, d)
        dk_blk = torch.zeros(k_blk.shape, **opts)
        dv_blk = torch.zeros(v_blk.shape, **opts)
        # causal: queries before this block of keys never see it, skip them
        r_start = (c0 // block_q) * block_q if is_causal else 0
        for r0 in range(r_start, T_q, block_q):
            r1 = min(r0 + block_q, T_q)
            q_blk, do_blk = q[..., r0:r1, :], grad_out[..., r0:r1, :]
            s = (q_blk @ k_blk.transpose(-2, -1)).to(acc_dtype) * scale  # recomputed
            hidden = _block_mask(r0, r1, c0, c1, q.device) if is_causal else None
            if hidden is not None:
                s = s.masked_fill(hidden, float("-inf"))
            p = torch.exp(s - lse[..., r0:r1].unsqueeze(-1))  # (..., bq, bk) = softmax
            dv_blk += (p.to(do_blk.dtype).transpose(-2, -1) @ do_blk).to(acc_dtype)
            dp = (do_blk @ v_blk.transpose(-2, -1)).to(acc_dtype)  # (..., bq, bk)
            ds = p * (dp - D[..., r0:r1].unsqueeze(-1)) * scale  # d(q k^T), scaled
            dq[..., r0:r1, :] += (ds.to(k.dtype) @ k_blk).to(acc_dtype)
            dk_blk += (ds.to(q.dtype).transpose(-2, -1) @ q_blk).to(acc_dtype)
        dk[..., c0:c1, :] = dk_blk
        dv[..., c0:c1, :] = dv_blk
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _TiledAttention(torch.autograd.Function):
    """Autograd glue: the forward saves q, k, v, the output and one log-sum-exp per
    query, all linear in T; the backward recomputes everything else."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float, is_causal: bool,
                block_q: int, block_k: int) -> Tensor:
        out, lse = _tiled_forward(q, k, v, scale, is_causal, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.config = (scale, is_causal, block_q, block_k)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        grads = _tiled_backward(q, k, v, out, lse, grad_out.contiguous(), *ctx.config)
        return (*grads, None, None, None, None)


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, *, is_causal: bool = False,
                    scale: float | None = None, block_q: int = 128,
                    block_k: int = 128) -> Tensor:
    """FlashAttention-style attention in plain PyTorch: equal to
    :func:`scaled_dot_product_attention` up to rounding, with memory linear in the
    sequence length, forward and backward.

    ``q`` is ``(..., T_q, d)``, ``k`` and ``v`` are ``(..., T_k, d)`` with the same
    leading dimensions (repeat kv heads first for grouped-query attention).
    ``is_causal`` follows torch's convention (query ``i`` sees keys ``0..i``).
    Low-precision inputs accumulate in float32. Arbitrary masks are not supported: a
    T x T mask would be exactly the quadratic object this function avoids.
    """
    _check_qkv(q, k, v)
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ValueError(f"tiled_attention needs the same leading dimensions for q, k "
                         f"and v, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}; expand or repeat them first")
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, "
                         f"block_k={block_k}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _TiledAttention.apply(q, k, v, scale, bool(is_causal), int(block_q),
                                 int(block_k))


# --------------------------------------------------------------------------------------
# 2. What attention costs: time and peak memory (Chapter 3, benchmarks/attention.py)


def _naive(q: Tensor, k: Tensor, v: Tensor, is_causal: bool) -> Tensor:
    return scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def _tiled(q: Tensor, k: Tensor, v: Tensor, is_causal: bool) -> Tensor:
    return tiled_attention(q, k, v, is_causal=is_causal)


def _torch_fused(q: Tensor, k: Tensor, v: Tensor, is_causal: bool) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


AttentionFn = Callable[[Tensor, Tensor, Tensor, bool], Tensor]  # (q, k, v, is_causal)
ATTENTION_IMPLEMENTATIONS: dict[str, AttentionFn] = {
    "naive": _naive,  # the five lines: materialises T x T scores and weights
    "tiled": _tiled,  # ours, flash-style: linear memory, Python loops over blocks
    "torch_fused": _torch_fused,  # FlashAttention on GPUs, a tiled C++ kernel on CPUs
}


@dataclass(frozen=True)
class AttentionCost:
    """Forward+backward cost of one attention implementation at one sequence length."""

    impl: str
    seq_len: int
    seconds: float  # fastest wall-clock time of forward + backward
    peak_bytes: int  # peak tensor memory above the inputs during forward + backward


def measure_attention_cost(impl: str, seq_len: int, *, batch_size: int = 1,
                           n_heads: int = 4, head_dim: int = 64, is_causal: bool = True,
                           device: torch.device | str = "cpu",
                           dtype: torch.dtype = torch.float32, repeats: int = 3,
                           measure_time: bool = True, seed: int = 0) -> AttentionCost:
    """Time and peak memory of forward + backward through
    ``ATTENTION_IMPLEMENTATIONS[impl]``, on random inputs of shape
    ``(batch_size, n_heads, seq_len, head_dim)``."""
    if impl not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose from "
                         f"{list(ATTENTION_IMPLEMENTATIONS)}")
    attend = ATTENTION_IMPLEMENTATIONS[impl]
    gen = torch.Generator().manual_seed(seed)
    shape = (batch_size, n_heads, seq_len, head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype).requires_grad_()
               for _ in range(3))
    grad_out = torch.randn(shape, generator=gen).to(device, dtype)

    def step() -> None:
        q.grad = k.grad = v.grad = None
        attend(q, k, v, is_causal).backward(grad_out)

    seconds = float("nan")
    if measure_time:
        seconds = best_seconds(step, repeats=repeats, device=device)
    q.grad = k.grad = v.grad = None
    peak = peak_memory_bytes(step, device)
    return AttentionCost(impl=impl, seq_len=seq_len, seconds=seconds, peak_bytes=peak)
