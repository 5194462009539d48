"""Attention, from five lines to flash-style tiling (Chapter 3).

The module builds attention up in the order the chapter explains it:

1. :func:`softmax`, numerically stable; a fully masked row gives zeros, not NaN.
2. :func:`scaled_dot_product_attention`, the five lines: scores, scale, mask, softmax,
   weighted sum of values.
3. :class:`CausalSelfAttention`, multi-head causal self-attention with a fused QKV
   projection, grouped-query attention (``n_kv_heads``) and a flag that hands the core
   to torch's fused kernel; :class:`KVCache`, the keys and values of past positions for
   incremental decoding; :class:`AttentionOnlyLM`, the model of the attention maps.
4. :func:`tiled_attention`, FlashAttention-style: an online softmax over blocks of keys
   that never materialises the T x T score matrix, with a hand-written backward pass
   that recomputes the scores block by block.
5. The tools that measure what attention costs (:func:`measure_attention_cost`), used by
   the chapter's figures and by ``benchmarks/attention.py``.

Lines stay within 88 characters: the book prints these functions.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_LOW_PRECISION = (torch.float16, torch.bfloat16)
Rotary = Callable[[Tensor, int], Tensor]  # rotary(q_or_k, start_position) -> rotated


# --------------------------------------------------------------------------------------
# 1. Softmax


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Softmax along ``dim``, stable for huge and tiny logits; all-``-inf`` rows give 0.

    Chapter 3 explains the two tricks. Subtracting the row maximum leaves the result
    unchanged (it cancels between numerator and denominator) but keeps every exponent at
    most 0, so ``exp`` never overflows. A fully masked row (every logit ``-inf``) has no
    maximum to subtract; its output is all zeros, as in torch's
    ``scaled_dot_product_attention``, rather than 0/0 = NaN. Half precision is computed
    in float32.
    """
    if not x.is_floating_point():
        raise TypeError(f"softmax needs a floating-point tensor, got {x.dtype}; "
                        "convert with x.float()")
    work = x.float() if x.dtype in _LOW_PRECISION else x
    # The shift is a per-row constant that cancels out: no need to differentiate it.
    row_max = work.amax(dim=dim, keepdim=True).detach()
    # A fully masked row: avoid -inf - (-inf) = NaN.
    row_max = row_max.masked_fill(row_max == float("-inf"), 0.0)
    exp = torch.exp(work - row_max)
    # A row with any finite logit sums to at least 1 (its maximum gives exp(0) = 1); a
    # fully masked row sums to 0, and the clamp turns its 0/0 into 0/1e-30 = 0.
    out = exp / exp.sum(dim=dim, keepdim=True).clamp_min(1e-30)
    return out.to(x.dtype)


# --------------------------------------------------------------------------------------
# 2. Scaled dot-product attention


def causal_mask(t_q: int, t_k: int | None = None, *, offset: int = 0,
                device=None) -> Tensor:
    """Boolean ``(t_q, t_k)`` mask, True where query ``i`` may attend to key ``j``, that
    is where ``j <= i + offset``.

    ``offset=0`` aligns the first query with the first key (torch's ``is_causal``). With
    a KV cache holding ``p`` positions, the ``t_q`` new queries sit at positions
    ``p .. p + t_q - 1`` and ``offset=p`` is the right mask (Chapter 3, "The KV cache").
    """
    t_k = t_q if t_k is None else t_k
    if t_q < 0 or t_k < 0:
        raise ValueError(f"causal_mask needs non-negative sizes, got t_q={t_q}, "
                         f"t_k={t_k}")
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=offset)


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim < 2:
            raise ValueError(f"{name} must have shape (..., T, head_dim), at least 2 "
                             f"dimensions, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dimension (head_dim, the size "
                         f"of the dot product), got q {tuple(q.shape)} and "
                         f"k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of positions (one value "
                         f"per key), got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, "
                        f"{v.dtype}")
    try:
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(f"the leading (batch, head) dimensions of q, k and v must "
                         f"broadcast, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}") from None


def _check_mask(mask: Tensor, scores_shape: torch.Size) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"mask must be boolean (True = may attend) or floating point "
                        f"(added to the scores), got {mask.dtype}")
    try:
        broadcast = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        broadcast = None
    if broadcast != scores_shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the "
                         f"scores' shape {tuple(scores_shape)} (..., T_q, T_k); a "
                         f"(T_q, T_k) mask works for every batch and head")


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention as Chapter 3 writes it: ``softmax(q k^T / sqrt(d_k) + mask) v``.

    ``q`` is ``(..., T_q, d_k)``, ``k`` is ``(..., T_k, d_k)``, ``v`` is
    ``(..., T_k, d_v)``; the leading (batch, head) dimensions broadcast. ``mask`` is
    boolean (True where a query may attend to a key) or floating point (added to the
    scores: 0 keeps, ``-inf`` removes), broadcastable to ``(..., T_q, T_k)``.
    ``is_causal`` is :func:`causal_mask` with offset 0. ``dropout_p`` drops attention
    weights whenever it is positive (a module passes 0 in eval mode), like torch's
    ``scaled_dot_product_attention``. Returns the ``(..., T_q, d_v)`` output, and the
    ``(..., T_q, T_k)`` weights too if ``return_weights``.
    """
    _check_qkv(q, k, v)
    if is_causal and mask is not None:
        raise ValueError("pass either mask or is_causal=True, not both "
                         "(fold the causal mask into yours)")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if is_causal:
        mask = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
    if mask is not None:
        _check_mask(mask, q.shape[:-1] + k.shape[-2:-1])

    scores = q @ k.transpose(-2, -1)  # (..., T_q, T_k): each query against each key
    scores = scores * scale  # keep the scores' variance near 1 whatever d_k
    if mask is not None:  # masked keys get -inf, so exp() gives them weight 0
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    weights = softmax(scores, dim=-1)  # each row: a distribution over the keys
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v  # (..., T_q, d_v): weighted averages of the values
    return (out, weights) if return_weights else out


# --------------------------------------------------------------------------------------
# 3. KV cache, multi-head causal self-attention, and a model to look at


class KVCache:
    """Keys and values of past positions for one layer, preallocated for ``max_len``.

    Chapter 3 explains why decoding needs it: generating token ``t`` needs the keys and
    values of every earlier token, which do not change, so we keep them instead of
    recomputing them. The cache stores ``n_kv_heads`` heads (fewer than the query heads
    under grouped-query attention, which is the point of GQA). It is for inference: run
    the model under ``torch.no_grad()`` or ``torch.inference_mode()``.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, *,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        sizes = {"batch_size": batch_size, "n_kv_heads": n_kv_heads, "max_len": max_len,
                 "head_dim": head_dim}
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"KVCache {name} must be a positive int, "
                                 f"got {value!r}")
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # number of positions filled so far

    @property
    def nbytes(self) -> int:
        """Memory held by the preallocated keys and values."""
        return self.k.nbytes + self.v.nbytes

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k``, ``v`` of shape ``(B, n_kv_heads, T_new, head_dim)``; return all
        keys and values so far, ``(B, n_kv_heads, length, head_dim)``."""
        batch, heads, _, head_dim = self.k.shape
        expected = (batch, heads, head_dim)
        if k.shape != v.shape or k.ndim != 4 or (*k.shape[:2], k.shape[3]) != expected:
            raise ValueError(f"KVCache.update expects k and v of shape (B={batch}, "
                             f"n_kv_heads={heads}, T_new, head_dim={head_dim}), got k "
                             f"{tuple(k.shape)} and v {tuple(v.shape)}")
        if k.dtype != self.k.dtype or v.dtype != self.v.dtype:
            raise TypeError(f"KVCache holds {self.k.dtype} but got k {k.dtype}, v "
                            f"{v.dtype}; create the cache with the dtype the model "
                            f"computes in (KVCache(..., dtype={k.dtype}))")
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            raise RuntimeError("KVCache is for inference and does not track gradients; "
                               "decode under torch.no_grad() or torch.inference_mode()")
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KVCache overflow: it holds {self.length} of "
                             f"max_len={self.max_len} positions and cannot take "
                             f"{k.shape[2]} more; create it with a larger max_len, or "
                             f"reset() it")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        """Forget every position (the memory stays allocated for the next sequence)."""
        self.length = 0


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Grouped-query attention: repeat each head of ``x`` ``(B, n_kv_heads, T, hd)``
    ``n_rep`` times, giving ``(B, n_kv_heads * n_rep, T, hd)``; query head ``h`` then
    meets key/value head ``h // n_rep``."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (Chapter 3), the attention layer of the book.

    One fused linear map produces the queries, keys and values of all heads at once; the
    heads attend in parallel and their outputs are concatenated and mixed by ``proj``.
    ``n_kv_heads < n_heads`` gives grouped-query attention (``n_kv_heads=1``:
    multi-query attention), where groups of query heads share one key/value head.
    ``fused=True``
    hands the core to ``torch.nn.functional.scaled_dot_product_attention`` (a fused,
    memory-efficient kernel); ``fused=False`` runs :func:`scaled_dot_product_attention`,
    five lines you can read.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *,
                 dropout: float = 0.0, bias: bool = True, fused: bool = True) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model < 1 or n_heads < 1 or n_kv_heads < 1:
            raise ValueError(f"d_model, n_heads and n_kv_heads must be positive, got "
                             f"{d_model}, {n_heads}, {n_kv_heads}")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by "
                             f"n_heads={n_heads} (head_dim = d_model / n_heads); pick "
                             f"n_heads among the divisors of d_model")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of "
                             f"n_kv_heads={n_kv_heads} (each key/value head serves an "
                             f"equal group of query heads)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.fused = fused
        qkv_width = (n_heads + 2 * n_kv_heads) * self.head_dim
        self.qkv = nn.Linear(d_model, qkv_width, bias=bias)
        # the residual projection (GPT-2's initialisation scales it, Chapter 4)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, "
                f"n_kv_heads={self.n_kv_heads}, dropout={self.dropout}, "
                f"fused={self.fused}")

    def _heads(self, x: Tensor, rotary: Rotary | None, start: int):
        """Project ``x`` (B, T, C) to per-head queries (B, H, T, hd), keys and values
        (B, H_kv, T, hd)."""
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"CausalSelfAttention expects x of shape "
                             f"(B, T, d_model={self.d_model}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        H, H_kv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([H * hd, H_kv * hd, H_kv * hd], dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, H_kv, hd).transpose(1, 2)  # (B, H_kv, T, hd)
        v = v.view(B, T, H_kv, hd).transpose(1, 2)  # (B, H_kv, T, hd)
        if rotary is not None:  # positions enter q and k only (Chapter 4)
            q, k = rotary(q, start), rotary(k, start)
        return q, k, v

    def forward(self, x: Tensor, *, rotary: Rotary | None = None,
                cache: KVCache | None = None) -> Tensor:
        """``x`` (B, T, C) -> (B, T, C). With a ``cache``, ``x`` holds the positions
        that follow the cached ones."""
        past = cache.length if cache is not None else 0
        q, k, v = self._heads(x, rotary, past)
        B, T, C = x.shape
        if cache is not None:
            k, v = cache.update(k, v)  # (B, H_kv, past + T, hd)
        # Query i sits at position past + i and sees keys 0 .. past + i. With nothing
        # cached that is torch's is_causal; one new query sees the whole cache; several
        # new queries after a cache need the mask shifted by past.
        mask, is_causal = None, past == 0
        if past > 0 and T > 1:
            mask = causal_mask(T, past + T, offset=past, device=x.device)
        dropout_p = self.dropout if self.training else 0.0
        if self.fused:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                enable_gqa=self.n_kv_heads != self.n_heads)
        else:
            n_rep = self.n_heads // self.n_kv_heads
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, past + T, hd)
            y = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal,
                                             dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, H * hd): heads side by side
        return self.proj(y)

    @torch.no_grad()
    def attention_weights(self, x: Tensor, *, rotary: Rotary | None = None) -> Tensor:
        """Every head's causal attention weights, ``(B, n_heads, T, T)``, for maps."""
        q, k, v = self._heads(x, rotary, 0)
        n_rep = self.n_heads // self.n_kv_heads
        _, weights = scaled_dot_product_attention(
            q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), is_causal=True,
            return_weights=True)
        return weights


class AttentionOnlyLM(nn.Module):
    """The smallest language model built around attention (Chapter 3's attention maps).

    Token and position embeddings, one :class:`CausalSelfAttention` added to them as a
    residual (so each token's own identity survives beside what attention gathers), and
    a linear map to next-token logits. No MLP and no normalisation: a "one-layer
    attention-only transformer" in the sense of Elhage et al. (2021). Chapter 4 builds
    the full GPT block.
    """

    def __init__(self, vocab_size: int, block_size: int, d_model: int,
                 n_heads: int) -> None:
        super().__init__()
        if vocab_size < 1 or block_size < 1:
            raise ValueError(f"vocab_size and block_size must be positive, got "
                             f"{vocab_size}, {block_size}")
        self.block_size = block_size
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(block_size, d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.head = nn.Linear(d_model, vocab_size)

    def embed(self, idx: Tensor) -> Tensor:
        """Token ids ``(B, T)`` to the attention layer's input ``(B, T, d_model)``."""
        if idx.ndim != 2 or idx.shape[1] > self.block_size:
            raise ValueError(f"expected token ids of shape (B, T) with "
                             f"T <= block_size={self.block_size}, "
                             f"got {tuple(idx.shape)}")
        positions = torch.arange(idx.shape[1], device=idx.device)
        return self.token_embedding(idx) + self.position_embedding(positions)

    def forward(self, idx: Tensor,
                targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Next-token logits ``(B, T, vocab)`` at every position, and the mean
        cross-entropy if ``targets`` (the ids shifted by one) are given."""
        x = self.embed(idx)  # (B, T, C)
        logits = self.head(x + self.attn(x))  # (B, T, vocab)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def attention_weights(self, idx: Tensor) -> Tensor:
        """Every head's attention weights on ``idx`` (B, T): ``(B, n_heads, T, T)``."""
        return self.attn.attention_weights(self.embed(idx))


# --------------------------------------------------------------------------------------
# 4. Flash-style tiled attention


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
# 5. What attention costs: time and peak memory (Chapter 3, benchmarks/attention.py)


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


def synchronize(device: torch.device) -> None:
    """Wait until a GPU has finished the work queued so far (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for a while: the profiler's C++ side logs
    "profiler_start" lines there at every start and stop (no setting turns them off),
    and a notebook would show them."""
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):  # no usable stderr: nothing to silence
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory_bytes(fn: Callable[[], object],
                      device: torch.device | str = "cpu") -> int:
    """Peak tensor memory allocated while ``fn()`` runs, above what existed before.

    On CUDA this is the caching allocator's peak statistic. A CPU has no such counter,
    so we record every allocation and free with torch's profiler
    (``profile_memory=True``) and take the maximum of their running sum. Both count
    tensor storage only, and give the same number on every run.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    # the profiler's event tree is the one place that logs CPU allocations
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    allocations: list[tuple[int, int]] = []  # (time, bytes); frees are negative
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    peak = running = 0
    for _, size in sorted(allocations):
        running += size
        peak = max(peak, running)
    return peak


def best_seconds(fn: Callable[[], object], *, repeats: int, warmup: int = 1,
                 device: torch.device | str = "cpu") -> float:
    """Fastest wall-clock time of ``fn()`` in ``repeats`` runs, after ``warmup`` runs.

    The minimum, not the mean: other processes on the machine only ever add time, so
    the fastest run is the best estimate of what the code itself costs.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times)


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


def kv_cache_bytes(*, n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int,
                   batch_size: int = 1, bytes_per_value: int = 2) -> int:
    """Memory of a full KV cache: a key and a value vector per layer, kv head and
    position (Chapter 3)."""
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_value
