"""Measuring a post-training stage: accuracy with a bootstrap confidence interval.
Chapter 8."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


class Estimate(NamedTuple):
    mean: float
    low: float
    high: float


def bootstrap_ci(
    scores: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Estimate:
    """The mean of ``scores`` (1/0 for correct/wrong, or rewards) and its percentile
    bootstrap interval (Efron, 1979): resample the items with replacement
    ``n_resamples`` times, and take the middle ``confidence`` of the resampled means.
    Seeded: the same call gives the same interval."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(
            f"scores must be a non-empty 1-d sequence, got shape {values.shape}"
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 100:
        raise ValueError(
            f"n_resamples must be at least 100 for a stable interval, got {n_resamples}"
        )
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, values.size, size=(n_resamples, values.size))
    means = values[picks].mean(1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Estimate(float(values.mean()), float(low), float(high))


def compare(a: Sequence[float], b: Sequence[float]) -> str:
    """Where the interval of estimate ``a`` lies against that of ``b``, each
    ``(mean, low, high)``: ``"lies above"`` (a's low end above b's high end), ``"lies
    below"``, or ``"overlaps"``. Two overlapping intervals do not say that the means are
    equal, only that these items cannot tell them apart."""
    (_, a_low, a_high), (_, b_low, b_high) = a, b
    if a_low > a_high or b_low > b_high:
        raise ValueError(f"an interval needs low <= high, got {tuple(a)} and {tuple(b)}")
    if a_low > b_high:
        return "lies above"
    if a_high < b_low:
        return "lies below"
    return "overlaps"
