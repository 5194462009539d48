"""Attention, from five lines to flash-style tiling (Chapter 3).

The module builds attention up in the order the chapter explains it:

1. :func:`softmax`, numerically stable; a fully masked row gives zeros, not NaN.
2. :func:`scaled_dot_product_attention`, the five lines: scores, scale, mask, softmax,
   weighted sum of values.
3. :class:`CausalSelfAttention`, multi-head causal self-attention with a fused QKV
   projection, grouped-query attention (``n_kv_heads``) and a flag that hands the core
   to torch's fused kernel; :class:`KVCache`, the keys and values of past positions for
   incremental decoding; :class:`AttentionOnlyLM`, the model of the attention maps.
The fast version, FlashAttention-style tiling, and what each version costs are in
:mod:`llmbook.flash`.

Lines stay within 88 characters: the book prints these functions.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
