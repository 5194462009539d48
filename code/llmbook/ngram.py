"""Character n-gram models: the classical yardstick a neural language model must beat.
Chapter 5 compares the book's model with them.

An order-``n`` model predicts a character from the ``n - 1`` before it, with probabilities
counted on the training text. Scores are in bits per character, the unit of
:func:`llmbook.objectives.bits_per_char`, so they compare directly with any model's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmbook import data
from llmbook.artifacts import atomic_write_text, cached_artifact


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
    # character. A table over code points numbers them in one pass, without sorting.
    points = np.frombuffer((train_text + eval_text).encode("utf-32-le"), dtype=np.uint32)
    present = np.zeros(int(points.max()) + 1, dtype=bool)
    present[points] = True
    A = int(present.sum())
    symbols = (np.cumsum(present) - 1)[points]
    train, evals = symbols[: len(train_text)], symbols[len(train_text) :]
    # Each n-gram of the training text as one integer; sorted once, looked up by binary
    # search. Its context (the n-gram less its last character) is code // A, so the sorted
    # n-grams list each context's n-grams side by side: one sum per run gives its count.
    codes = _ngram_codes(train, order, A)
    ngrams, ngram_counts = np.unique(codes, return_counts=True)
    runs = np.flatnonzero(np.diff(ngrams // A, prepend=-1))
    contexts, context_counts = (ngrams // A)[runs], np.add.reduceat(ngram_counts, runs)
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


class KneserNey:
    """An interpolated Kneser-Ney character n-gram model (Kneser and Ney, 1995; the
    interpolated form of Chen and Goodman, 1999), the strongest classical baseline.

    Add-alpha smoothing gives an unseen continuation the same small share in every context.
    Kneser-Ney subtracts a discount ``D`` from every seen count and hands the freed mass to
    the next-shorter history, weighted by how many distinct characters followed the context:

        p(c | h) = max(n(h c) - D, 0) / n(h .) + D * N(h .) / n(h .) * p(c | h')

    where ``h'`` drops the oldest character of ``h``, ``n(h .)`` sums ``n(h c)`` over ``c``
    and ``N(h .)`` counts the characters seen after ``h``. At the highest order ``n`` is the
    plain count; at lower orders it is the *continuation count*, the number of distinct
    characters seen before ``h c``: a character that follows many histories is a likely
    guess after a new one, whatever its raw frequency. A context never seen passes its whole
    mass down; the chain ends in the uniform distribution over the alphabet.

    Counts are gathered once per model; :meth:`bits_per_char` scores a text for any
    discount, so tuning the discount costs one scoring pass each.
    """

    def __init__(self, train_text: str, order: int, alphabet: str = "") -> None:
        if order < 1:
            raise ValueError(f"order must be at least 1, got {order}")
        if not train_text:
            raise ValueError("train_text must be non-empty")
        chars = sorted(set(train_text) | set(alphabet))
        self.order, self.index = order, {c: i for i, c in enumerate(chars)}
        self.A = len(chars)
        if self.A ** order >= 2**62:
            raise ValueError(f"order {order} over {self.A} symbols overflows 64-bit codes")
        train = self._symbols(train_text)
        # counts[k]: (sorted k-gram codes, their counts): plain at the top order, else
        # continuation counts (distinct predecessors of each k-gram)
        grams = {k: np.unique(_ngram_codes(train, k, self.A), return_counts=True)
                 for k in range(1, order + 1)}
        self.counts = {order: grams[order]}
        for k in range(1, order):
            longer = grams[k + 1][0]
            self.counts[k] = np.unique(longer % self.A**k, return_counts=True)
        # per context (the k-gram code // A): the total count and the number of types
        self.contexts = {}
        for k, (codes, counts) in self.counts.items():
            context, first = np.unique(codes // self.A, return_index=True)
            totals = np.add.reduceat(counts, first).astype(np.float64)
            types = np.diff(np.append(first, len(codes))).astype(np.float64)
            self.contexts[k] = (context, totals, types)

    def _symbols(self, text: str) -> np.ndarray:
        unknown = set(text) - set(self.index)
        if unknown:
            raise ValueError(f"characters {sorted(unknown)[:5]} are not in the model's "
                             "alphabet; pass alphabet= every text's characters")
        return np.array([self.index[c] for c in text], dtype=np.int64)

    def bits_per_char(self, text: str, discount: float = 0.75) -> float:
        """Bits per character of ``text``; the first characters are scored with the shorter
        histories they have."""
        if not 0 < discount < 1:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        if not text:
            raise ValueError("text must be non-empty")
        symbols = self._symbols(text)
        bits = 0.0
        for n in range(1, self.order + 1):  # position i has a history of min(i, order-1)
            at = np.arange(n - 1, len(symbols)) if n == self.order else np.array([n - 1])
            at = at[at < len(symbols)]
            if len(at):
                bits -= np.log2(self._probability(symbols, at, n, discount)).sum()
        return float(bits) / len(symbols)

    def _probability(self, symbols: np.ndarray, at: np.ndarray, n: int,
                     discount: float) -> np.ndarray:
        """p(symbols[i] | the n - 1 symbols before it) for each position i in ``at``."""
        p = np.full(len(at), 1.0 / self.A)
        for k in range(1, n + 1):  # from the unigram up, each order interpolates the last
            codes = np.zeros(len(at), dtype=np.int64)
            for j in range(k):
                codes = codes * self.A + symbols[at - k + 1 + j]
            count = _lookup(*self.counts[k], codes)
            context, totals, types = self.contexts[k]
            total = _lookup(context, totals, codes // self.A)
            kinds = _lookup(context, types, codes // self.A)
            seen = total > 0
            safe = np.where(seen, total, 1.0)
            mixed = (np.maximum(count - discount, 0) + discount * kinds * p) / safe
            p = np.where(seen, mixed, p)
        return p


@dataclass(frozen=True)
class KneserNeySweep:
    """The Kneser-Ney baseline of Chapter 5: every order and discount scored on the
    validation plays, the best of them on the test plays."""

    orders: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    discounts: tuple[float, ...] = (0.75, 0.9, 0.95)
    corpus: data.CorpusConfig = field(default_factory=data.CorpusConfig)


def kneser_ney_baseline(sweep: KneserNeySweep = KneserNeySweep()) -> dict:
    """Tune the order and discount of :class:`KneserNey` on the validation plays and score
    the best on the test plays; cached (a minute or two of counting, once). Returns
    ``{"val": {order: {discount: bpc}}, "order", "discount", "val_bpc", "test_bpc"}``."""

    def build(out: Path) -> None:
        train, val, test = (data.load_split(s, sweep.corpus) for s in data.SPLITS)
        scores: dict[int, dict[float, float]] = {}
        for order in sweep.orders:
            model = KneserNey(train, order, alphabet=val + test)
            scores[order] = {d: model.bits_per_char(val, d) for d in sweep.discounts}
        order, discount = min(((n, d) for n in scores for d in scores[n]),
                              key=lambda nd: scores[nd[0]][nd[1]])
        best = KneserNey(train, order, alphabet=val + test)
        result = {"val": scores, "order": order, "discount": discount,
                  "val_bpc": scores[order][discount],
                  "test_bpc": best.bits_per_char(test, discount)}
        atomic_write_text(out / "kneser_ney.json", json.dumps(result, indent=1))

    path = cached_artifact("kneser-ney", sweep, build) / "kneser_ney.json"
    result = json.loads(path.read_text())
    result["val"] = {int(n): {float(d): v for d, v in row.items()}
                     for n, row in result["val"].items()}
    return result
