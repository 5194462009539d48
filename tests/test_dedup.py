"""Chapter 1: exact and near deduplication, MinHash checked against exact Jaccard and against datasketch."""

from __future__ import annotations

import numpy as np
import pytest

from llmbook import dedup

TEXT = ("Now is the winter of our discontent made glorious summer by this sun of York and all the clouds that "
        "lour'd upon our house in the deep bosom of the ocean buried")


def test_exact_duplicates_ignore_case_punctuation_and_spacing():
    paragraphs = ["To be, or not to be.", "to be or  NOT to be", "Something else entirely", "To be or not to be!"]
    assert dedup.exact_duplicates(paragraphs) == [1, 3]
    assert dedup.exact_duplicates(paragraphs, min_chars=30) == []


def test_shingles_and_jaccard():
    assert dedup.shingles("a b c d e f", n=5) == {"a b c d e", "b c d e f"}
    assert dedup.shingles("a b", n=5) == {"a b"}
    assert dedup.jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(0.5)
    assert dedup.jaccard(set(), set()) == 1.0


def _edited(text: str, fraction: float, rng: np.random.Generator) -> str:
    words = text.split() * 4
    for i in rng.choice(len(words), size=int(len(words) * fraction), replace=False):
        words[i] = f"changed{i}"
    return " ".join(words)


def test_minhash_estimates_exact_jaccard():
    rng = np.random.default_rng(0)
    hasher = dedup.MinHasher(num_perm=256, seed=7)
    errors = []
    for fraction in np.linspace(0, 0.6, 13):
        a, b = dedup.shingles(" ".join(TEXT.split() * 4)), dedup.shingles(_edited(TEXT, fraction, rng))
        exact = dedup.jaccard(a, b)
        estimate = dedup.estimate_jaccard(hasher.signature(a), hasher.signature(b))
        errors.append(abs(exact - estimate))
    # standard deviation sqrt(J(1-J)/k) <= 0.5/16 = 0.031 for k = 256
    assert max(errors) < 0.1 and np.mean(errors) < 0.04


def test_minhash_agrees_with_datasketch():
    datasketch = pytest.importorskip("datasketch")
    rng = np.random.default_rng(1)
    ours, theirs = [], []
    hasher = dedup.MinHasher(num_perm=256)
    for fraction in (0.05, 0.2, 0.4):
        a, b = dedup.shingles(" ".join(TEXT.split() * 4)), dedup.shingles(_edited(TEXT, fraction, rng))
        ours.append(dedup.estimate_jaccard(hasher.signature(a), hasher.signature(b)))
        ma, mb = datasketch.MinHash(num_perm=256, seed=3), datasketch.MinHash(num_perm=256, seed=3)
        for item in a:
            ma.update(item.encode())
        for item in b:
            mb.update(item.encode())
        theirs.append(ma.jaccard(mb))
    np.testing.assert_allclose(ours, theirs, atol=0.1)


def test_identical_sets_have_identical_signatures_and_empty_sets_work():
    hasher = dedup.MinHasher(num_perm=64)
    assert np.array_equal(hasher.signature({"x", "y"}), hasher.signature({"y", "x"}))
    assert dedup.estimate_jaccard(hasher.signature(set()), hasher.signature(set())) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        dedup.estimate_jaccard(hasher.signature({"x"}), dedup.MinHasher(num_perm=32).signature({"x"}))


def test_lsh_finds_near_duplicates_and_verifies_them():
    rng = np.random.default_rng(2)
    base = " ".join(TEXT.split() * 4)
    others = [" ".join(rng.permutation(TEXT.split() * 4)) for _ in range(30)]
    near = base.replace("winter", "summer", 1)
    report = dedup.near_duplicates([base] + others + [near], threshold=0.8)
    assert report.duplicates == [31]
    kept, removed, similarity = report.confirmed_pairs[0]
    assert (kept, removed) == (0, 31) and similarity == pytest.approx(
        dedup.jaccard(dedup.shingles(base), dedup.shingles(near)))


def test_lsh_threshold_and_argument_checks():
    assert dedup.lsh_threshold(32, 4) == pytest.approx((1 / 32) ** 0.25)
    with pytest.raises(ValueError, match="divisible"):
        dedup.near_duplicates(["a"], num_perm=100, bands=32)
    with pytest.raises(ValueError, match="threshold"):
        dedup.near_duplicates(["a"], threshold=0)
    with pytest.raises(ValueError, match="num_perm"):
        dedup.MinHasher(num_perm=0)
