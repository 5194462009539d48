"""The book's data and pretrained model: what later chapters ask for by profile.
Chapter 5."""

from __future__ import annotations

from typing import Any

from llmbook import data
from llmbook.batches import ByteTokenizer, byte_token_file
from llmbook.profiles import Profile
from llmbook.train.config import TrainConfig
from llmbook.train.evaluation import TokenSplit
from llmbook.train.pretrained import Pretrained, PretrainSpec, cached_pretrained


def book_splits(profile: Profile,
                tokenizer: str = "book") -> tuple[Any, dict[str, TokenSplit]]:
    """The tokenizer and the train, val and test :class:`TokenSplit` of the book's corpus.

    ``tokenizer="book"`` is the profile's BPE tokenizer (Chapter 2; each play is followed by
    ``<|endoftext|>``), ``"bytes"`` the UTF-8 bytes of Chapter 1. Characters are counted on
    the plays' text either way, so bits per character compare.
    """
    if not isinstance(profile, Profile):
        raise TypeError("profile must be a llmbook.profiles.Profile, resolved once where "
                        f"the chapter or program starts, got {type(profile).__name__}")
    splits = {}
    if tokenizer == "book":
        from llmbook.tokenizers import book_token_file, book_tokenizer  # Chapter 2

        tok = book_tokenizer(profile)
        for name in data.SPLITS:
            n_chars = sum(len(text) for text in data.split_plays(name).values())
            tokens = data.TokenFile(book_token_file(profile, name))
            splits[name] = TokenSplit(tokens, n_chars, name)
    elif tokenizer == "bytes":
        tok = ByteTokenizer()
        for name in data.SPLITS:
            text = data.load_split(name)
            splits[name] = TokenSplit(byte_token_file(name), len(text), name)
    else:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; choose 'book' (BPE, Chapter 2) "
                         "or 'bytes'")
    return tok, splits


def pretrained_model(profile: Profile, *, tokenizer: str = "book", progress: bool = False,
                     **settings: Any) -> Pretrained:
    """The book's pretrained model for ``profile``: trained on first use, then read from the
    cache.

    The cache key covers the model and training settings, the seed, the global batch, the
    token files' SHA-256 and the source of the code that trains the model, so that any
    change trains a new model and nothing goes stale. ``settings`` override fields of
    ``profile.train`` (a different key, a different model).
    """
    tok, splits = book_splits(profile, tokenizer)
    run = TrainConfig.for_profile(profile, vocab_size=tok.n_vocab,
                                  data=splits["train"].tokens.meta["sha256"], **settings)
    spec = PretrainSpec(run, getattr(tok, "name", tokenizer),
                        splits["val"].tokens.meta["sha256"],
                        global_batch_tokens=run.tokens_per_step)
    return cached_pretrained(spec, splits, tok, device=profile.device, progress=progress)


def learning_rate_sweep(profile: Profile, *, progress: bool = False) -> dict[float,
                                                                             Pretrained]:
    """The book's model trained at each multiple ``lr_sweep_factors`` of the profile's peak
    learning rate (Chapter 5), keyed by the multiple. Each run is ``lr_sweep_steps`` long,
    its warm-up scaled in proportion and its floor kept at the same fraction of its peak,
    and is a cached artifact like the book's model."""
    if not isinstance(profile, Profile):
        raise TypeError("profile must be a llmbook.profiles.Profile, got "
                        f"{type(profile).__name__}")
    s, d = profile.train, profile.train_demos
    warmup = max(1, round(s.warmup_steps * d.lr_sweep_steps / s.steps))
    return {factor: pretrained_model(profile, progress=progress, steps=d.lr_sweep_steps,
                                     lr=s.lr * factor, min_lr=s.min_lr * factor,
                                     warmup_steps=warmup)
            for factor in d.lr_sweep_factors}
