"""The fitted law applied to the book itself: Chapter 5's pretraining budget spent as the
law says, trained and scored like Chapter 5's model. Chapter 7.

The law chooses ``N`` and ``D``, not a shape. Two families offer shapes of a given size:
the sweep's (:func:`~llmbook.scaling.sweep.shape_config`, narrow and deep, with small
heads), under which the law was fitted, and Chapter 5's (:func:`book_shape`: Chapter 5's
model made shallower or deeper at its width per layer and head size). The shape trained is
the member of a family nearest that ``N`` on a log scale, given Chapter 5's context so
that its loss compares with Chapter 5's model, and the sweep's recipe
(:func:`~llmbook.scaling.sweep.run_settings`). The run is a cached pretrained model
(:func:`~llmbook.train.pretrained.cached_pretrained`) scored on every token of the
validation and test plays, as Chapter 5's model is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

from llmbook.model import GPTConfig
from llmbook.profiles import Profile
from llmbook.scaling.accounting import parameter_count, training_flops_of_config
from llmbook.scaling.sweep import plan_run
from llmbook.train.book import book_splits
from llmbook.train.config import TrainConfig
from llmbook.train.pretrained import Pretrained, PretrainSpec, cached_pretrained

Family = Callable[[Profile, int, int], GPTConfig]  # (profile, n_layer, vocab_size) -> model


def book_budget(profile: Profile, vocab_size: int) -> tuple[TrainConfig, float]:
    """Chapter 5's run for ``profile`` and its training FLOPs, counted as the sweep counts
    them (:func:`~llmbook.costs.flops_per_token`, attention included)."""
    run = TrainConfig.for_profile(profile, vocab_size=vocab_size)
    tokens = run.settings.steps * run.tokens_per_step
    return run, training_flops_of_config(run.model, tokens)


def book_shape(profile: Profile, n_layer: int, vocab_size: int) -> GPTConfig:
    """Chapter 5's model with ``n_layer`` layers, ``d_model`` growing with the depth at
    Chapter 5's width per layer and heads of Chapter 5's size, and no dropout (the sweep's
    recipe): Chapter 5's own depth gives Chapter 5's model."""
    if n_layer < 1:
        raise ValueError(f"n_layer must be positive, got {n_layer}")
    book = TrainConfig.for_profile(profile, vocab_size=vocab_size).model
    head_dim = book.d_model // book.n_head
    if book.d_model % book.n_layer or (book.d_model // book.n_layer) % head_dim:
        raise ValueError(f"Chapter 5's model (d_model {book.d_model}, {book.n_layer} "
                         f"layers, {book.n_head} heads) has no whole width per layer in "
                         "heads; make d_model a multiple of n_layer times the head size")
    d_model = book.d_model // book.n_layer * n_layer
    return dataclasses.replace(book, n_layer=n_layer, d_model=d_model,
                               n_head=d_model // head_dim, dropout=0.0)


def nearest_shape(profile: Profile, n_params: float, vocab_size: int, *,
                  family: Family = book_shape, max_layers: int = 24) -> int:
    """The depth of ``family``'s model whose parameter count (all of them, as Hoffmann et
    al. counted) is nearest ``n_params`` in ratio, among 1 to ``max_layers`` layers."""
    if not n_params > 0:
        raise ValueError(f"n_params must be positive, got {n_params}")
    counts = {n: parameter_count(family(profile, n, vocab_size)).total
              for n in range(1, max_layers + 1)}
    return min(counts, key=lambda n: abs(math.log(counts[n] / n_params)))


def law_shaped_run(profile: Profile, n_layer: int, vocab_size: int, data: str = "", *,
                   family: Family = book_shape) -> TrainConfig:
    """``family``'s ``n_layer``-layer model at Chapter 5's context, trained with the
    sweep's recipe for as many whole steps of the sweep's batch as Chapter 5's FLOPs buy
    (:func:`~llmbook.scaling.sweep.plan_run`)."""
    book, flops = book_budget(profile, vocab_size)
    model = dataclasses.replace(family(profile, n_layer, vocab_size),
                                block_size=book.model.block_size)
    return plan_run(profile, flops, model, data).run


def law_shaped_model(profile: Profile, n_layer: int, *, family: Family = book_shape,
                     progress: bool = False) -> Pretrained:
    """:func:`law_shaped_run` trained on the book's splits (or read from the cache), its
    summary holding the same scores as Chapter 5's model: bits per character on every
    token of the validation and test plays, steps, tokens and training seconds."""
    tok, splits = book_splits(profile)
    run = law_shaped_run(profile, n_layer, tok.n_vocab,
                         splits["train"].tokens.meta["sha256"], family=family)
    spec = PretrainSpec(run, getattr(tok, "name", "book"),
                        splits["val"].tokens.meta["sha256"],
                        global_batch_tokens=run.tokens_per_step)
    return cached_pretrained(spec, splits, tok, device=profile.device, progress=progress)
