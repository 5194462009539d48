"""Generating text: greedy decoding, temperature, top-k and top-p sampling. Chapter 4.

A language model gives a distribution over the next token; generating is choosing one,
appending it and asking again. :func:`sample_next_token` makes the choice; :func:`generate`
runs the loop with a KV cache, so that each new token costs one position of compute instead
of a pass over the whole prefix.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from llmbook.model import GPT


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def filter_top_k(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits of each row (and ties with the k-th); the rest -inf."""
    kth = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al., 2020): keep the most likely tokens whose
    probabilities first add up to at least ``p``, set the rest to -inf. The most likely
    token always survives."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above
    drop_sorted = mass_before >= p  # the nucleus was complete without this token
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
    """One token id per row of ``logits`` ``(B, V)``: the argmax when ``temperature == 0``,
    else a draw from ``softmax(logits / temperature)`` restricted to the top ``k``, then to
    the top-``p`` nucleus."""
    _check_sampling(temperature, top_k, top_p)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (batch, vocab), "
                         f"got {tuple(logits.shape)}")
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = filter_top_p(logits, top_p)
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


@torch.no_grad()
def generate(model: GPT, idx: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             stop_tokens: Iterable[int] = (), generator: torch.Generator | None = None,
             use_cache: bool = True) -> Tensor:
    """Continue each row of ``idx`` ``(B, T0)`` by up to ``max_new_tokens`` tokens; returns
    ``(B, T0 + n)``.

    A row that produces one of ``stop_tokens`` is finished: its later positions repeat that
    stop token, and generation ends early once every row is finished. ``generator``, a
    seeded ``torch.Generator`` on the model's device, makes sampling repeatable; without one
    the global random state is used.

    With ``use_cache`` the prompt is read once (the prefill), filling one
    :class:`~llmbook.attention.KVCache` per block, and each later step feeds the model only
    the newest token. The context holds at most ``block_size`` tokens: without the cache
    each step reads the last ``block_size``; with it, a full cache is refilled from the last
    ``block_size // 2`` tokens, which pays for the refill over the next half-context of
    steps. The two agree exactly while the sequence fits in the context. The model runs in
    eval mode; its training mode is restored afterwards.
    """
    _check_sampling(temperature, top_k, top_p)
    if (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
            or max_new_tokens < 0):
        raise ValueError(f"max_new_tokens must be a non-negative int, "
                         f"got {max_new_tokens!r}")
    if idx.dim() != 2 or idx.shape[1] < 1:
        raise ValueError(
            "idx must have shape (batch, time) with at least one token, "
            f"got {tuple(idx.shape)}"
        )
    stop = torch.tensor(sorted({int(t) for t in stop_tokens}), dtype=idx.dtype,
                        device=idx.device)
    block_size = model.config.block_size

    was_training = model.training
    model.eval()
    try:
        out = idx
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        caches = model.new_kv_caches(idx.shape[0]) if use_cache else None
        pending = out[:, -block_size:]  # tokens the model has not read yet
        for _ in range(max_new_tokens):
            if caches is None:
                hidden = model.hidden_states(out[:, -block_size:])  # (B, T, C)
            else:
                # full: slide the window
                if caches[0].length + pending.shape[1] > block_size:
                    for cache in caches:
                        cache.reset()
                    pending = out[:, -max(1, block_size // 2):]
                hidden = model.hidden_states(pending, caches=caches)  # (B, T_pending, C)
            logits = model.lm_head(hidden[:, -1])  # (B, V): only the last position matters
            next_id = sample_next_token(logits, temperature=temperature, top_k=top_k,
                                        top_p=top_p, generator=generator)  # (B,)
            # finished rows repeat stop
            next_id = torch.where(finished, out[:, -1], next_id)
            out = torch.cat([out, next_id[:, None]], dim=1)
            pending = next_id[:, None]
            if stop.numel():
                finished |= torch.isin(next_id, stop)
                if bool(finished.all()):
                    break
        return out
    finally:
        model.train(was_training)
