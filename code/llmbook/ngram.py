"""Character n-gram models: the classical yardstick a neural language model must beat.
Chapter 5 compares the book's model with them.

An order-``n`` model predicts a character from the ``n - 1`` before it, with probabilities
counted on the training text. Scores are in bits per character, the unit of
:func:`llmbook.objectives.bits_per_char`, so they compare directly with any model's.
"""

from __future__ import annotations

import math

import numpy as np


def char_ngram_bits_per_char(train_text: str, eval_text: str, order: int,
                             alpha: float = 1.0) -> float:
    """Bits per character of ``eval_text`` under a character n-gram model of ``train_text``.

    ``order`` 1 is the unigram model (each character's frequency), 2 the bigram model (the
    next character given the previous one), and so on. Probabilities use add-``alpha``
    smoothing over the alphabet ``A`` of both texts,
    ``p(c | h) = (count(h c) + alpha) / (count(h) + alpha |A|)``, so that an unseen
    character or context costs a finite amount. The first ``order - 1`` characters of
    ``eval_text`` are scored with the shorter histories they have.
    """
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if not train_text or not eval_text:
        raise ValueError("train_text and eval_text must be non-empty")
    # Characters as integers 0..|A|-1, vectorised: UTF-32 gives one code point per
    # character.
    points = np.frombuffer((train_text + eval_text).encode("utf-32-le"), dtype=np.uint32)
    alphabet, symbols = np.unique(points, return_inverse=True)
    A = len(alphabet)
    train, evals = symbols[: len(train_text)], symbols[len(train_text) :]
    # Each n-gram of the training text as one integer; sorted once, looked up by binary
    # search.
    codes = _ngram_codes(train, order, A)
    ngrams, ngram_counts = np.unique(codes, return_counts=True)
    contexts, context_counts = np.unique(codes // A, return_counts=True)
    # the n-grams ending at positions order-1, order, ...
    queries = _ngram_codes(evals, order, A)
    p = ((_lookup(ngrams, ngram_counts, queries) + alpha)
         / (_lookup(contexts, context_counts, queries // A) + alpha * A))
    total_bits = -float(np.log2(p).sum())
    # the first characters have shorter histories
    for i in range(min(order - 1, len(evals))):
        n = i + 1
        gram = _ngram_codes(evals[:n], n, A)[0]
        history = _ngram_codes(train, n, A)
        count = np.count_nonzero(history == gram)
        context = np.count_nonzero(history // A == gram // A) if n > 1 else len(history)
        total_bits -= math.log2((count + alpha) / (context + alpha * A))
    return total_bits / len(evals)


def _ngram_codes(seq: np.ndarray, n: int, base: int) -> np.ndarray:
    if base**n >= 2**62:
        raise ValueError(f"order {n} over {base} symbols overflows 64-bit codes; "
                         "use a lower order")
    codes = np.zeros(max(0, len(seq) - n + 1), dtype=np.int64)
    for k in range(n):
        codes = codes * base + seq[k : len(seq) - n + 1 + k]
    return codes


def _lookup(keys: np.ndarray, counts: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The count of each query among the sorted ``keys`` (0 where absent)."""
    at = np.clip(np.searchsorted(keys, queries), 0, len(keys) - 1)
    return np.where(keys[at] == queries, counts[at], 0).astype(np.float64)
