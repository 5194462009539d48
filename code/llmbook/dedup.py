"""Deduplication: exact (hash of a normalised paragraph) and near (MinHash signatures + LSH
banding).

Chapter 1 explains both. Exact dedup catches copies that differ only in case, spacing or
punctuation. Near dedup catches passages that share most of their word n-grams: the Jaccard
similarity of two shingle sets :math:`J(A, B) = |A \\cap B| / |A \\cup B|` is estimated by
the fraction of agreeing MinHash values, and LSH bands the signatures so that only pairs
likely to exceed a threshold are ever compared.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np

_MERSENNE_PRIME = (1 << 61) - 1
_MAX_HASH = (1 << 32) - 1
_NON_WORD = re.compile(r"[^\w\s]+")
_SPACES = re.compile(r"\s+")


def normalize_for_dedup(text: str) -> str:
    """Casefold, drop punctuation, collapse whitespace: two paragraphs equal under this are
    exact duplicates."""
    return _SPACES.sub(" ", _NON_WORD.sub(" ", text.casefold())).strip()


def exact_duplicates(paragraphs: Sequence[str], min_chars: int = 0) -> list[int]:
    """Indices of paragraphs whose normalised form appeared earlier in the sequence (the
    first copy is kept).

    Paragraphs shorter than ``min_chars`` after normalisation are never flagged: short lines
    ("My lord?") recur naturally in dialogue and are not boilerplate.
    """
    seen: set[bytes] = set()
    duplicates = []
    for index, paragraph in enumerate(paragraphs):
        key = normalize_for_dedup(paragraph)
        if len(key) < min_chars:
            continue
        digest = hashlib.sha256(key.encode()).digest()
        if digest in seen:
            duplicates.append(index)
        else:
            seen.add(digest)
    return duplicates


def shingles(text: str, n: int = 5) -> set[str]:
    """The set of word n-grams of the normalised text (the whole text if it has fewer than n
    words)."""
    words = normalize_for_dedup(text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _hash32(token: str) -> int:
    return struct.unpack("<I", hashlib.sha1(token.encode("utf-8")).digest()[:4])[0]


@dataclass(frozen=True)
class MinHasher:
    """``num_perm`` random hash functions h(x) = (a x + b) mod p, applied to a 32-bit hash
    of each shingle.

    The probability that two sets have the same minimum under one such function is their
    Jaccard similarity, so the fraction of equal signature entries is an unbiased estimate
    of it.
    """

    num_perm: int = 128
    seed: int = 1

    def __post_init__(self) -> None:
        if self.num_perm < 1:
            raise ValueError(f"num_perm must be positive, got {self.num_perm}")

    @cached_property
    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        # a < 2^31 and x < 2^32 keep a*x + b below 2^64: exact uint64 arithmetic, no silent
        # wrap-around.
        rng = np.random.RandomState(self.seed)
        a = rng.randint(1, 1 << 31, size=self.num_perm, dtype=np.uint64)
        b = rng.randint(0, 1 << 32, size=self.num_perm, dtype=np.uint64)
        return a, b

    def signature(self, items: Iterable[str]) -> np.ndarray:
        """The MinHash signature (num_perm uint64 values) of a set of strings."""
        hashes = np.array([_hash32(item) for item in items], dtype=np.uint64)
        if hashes.size == 0:
            return np.full(self.num_perm, _MAX_HASH, dtype=np.uint64)
        a, b = self._params
        permuted = ((hashes[:, None] * a[None, :] + b[None, :])
                    % np.uint64(_MERSENNE_PRIME)) & np.uint64(_MAX_HASH)
        return permuted.min(axis=0)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signatures differ in length: {sig_a.shape} vs {sig_b.shape}; "
                         "use one MinHasher for both")
    return float(np.mean(sig_a == sig_b))


def lsh_threshold(bands: int, rows: int) -> float:
    """The similarity at which a pair becomes a candidate with probability about 1/2:
    (1/b)^(1/r)."""
    return (1.0 / bands) ** (1.0 / rows)


def lsh_candidate_pairs(signatures: Sequence[np.ndarray], bands: int,
                        rows: int) -> set[tuple[int, int]]:
    """Pairs (i < j) whose signatures agree on every row of at least one band.

    A pair with Jaccard similarity s shares a band with probability 1 - (1 - s^r)^b: an
    S-curve that is steep around :func:`lsh_threshold`, so similar pairs are found without
    comparing all n^2 pairs.
    """
    if not signatures:
        return set()
    if bands * rows != len(signatures[0]):
        raise ValueError(f"bands * rows must equal the signature length: {bands} * {rows} "
                         f"!= {len(signatures[0])}")
    pairs: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for index, signature in enumerate(signatures):
            buckets[signature[band * rows : (band + 1) * rows].tobytes()].append(index)
        for members in buckets.values():
            for i_pos, i in enumerate(members):
                for j in members[i_pos + 1 :]:
                    pairs.add((i, j))
    return pairs


@dataclass(frozen=True)
class NearDuplicateReport:
    duplicates: list[int]  # indices removed (each is similar to an earlier kept one)
    candidate_pairs: int  # pairs proposed by LSH
    # (kept, removed, exact Jaccard) verified above threshold
    confirmed_pairs: list[tuple[int, int, float]]


def near_duplicates(
    texts: Sequence[str],
    *,
    threshold: float = 0.8,
    ngram: int = 5,
    num_perm: int = 128,
    bands: int = 16,
    seed: int = 1,
) -> NearDuplicateReport:
    """Find texts that are near-duplicates of an earlier text (MinHash + LSH, then exact
    verification).

    LSH proposes candidates; each is checked with the exact Jaccard similarity of the
    shingle sets, so the result has no false positives; false negatives are pairs LSH never
    proposed, rare above the S-curve's knee.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_perm % bands:
        raise ValueError(f"num_perm ({num_perm}) must be divisible by bands ({bands})")
    hasher = MinHasher(num_perm=num_perm, seed=seed)
    shingle_sets = [shingles(text, ngram) for text in texts]
    signatures = [hasher.signature(s) for s in shingle_sets]
    candidates = lsh_candidate_pairs(signatures, bands, num_perm // bands)
    removed: set[int] = set()
    confirmed = []
    for i, j in sorted(candidates):
        if i in removed or j in removed:
            continue
        similarity = jaccard(shingle_sets[i], shingle_sets[j])
        if similarity >= threshold:
            removed.add(j)
            confirmed.append((i, j, similarity))
    return NearDuplicateReport(sorted(removed), len(candidates), confirmed)
