"""Runs drawn from a known law, to check that a fitting method gives back what went in
before trusting it with real runs. Chapter 7 uses them first; the tests use them
throughout."""

from __future__ import annotations

import numpy as np

from llmbook.scaling.fit import Run
from llmbook.scaling.laws import ChinchillaLaw


def synthetic_isoflop_runs(
    law: ChinchillaLaw,
    budgets,
    *,
    sizes_per_budget: int = 7,
    span: float = 8.0,
    noise: float = 0.0,
    seed: int = 0,
    curve_points: int = 20,
) -> list[Run]:
    """An IsoFLOP sweep under ``law``: for each budget ``C``, ``sizes_per_budget`` sizes
    log-spaced from ``N_opt(C) / span`` to ``N_opt(C) * span``, each trained on ``D = C
    / (6 N)`` tokens, its loss (and each of its ``curve_points`` curve points, spread
    log-uniformly over the last two decades of its run) multiplied by ``exp(noise * z)``
    with ``z`` standard normal from ``numpy.random.default_rng(seed)``."""
    if noise < 0 or span <= 1 or sizes_per_budget < 1:
        raise ValueError("need noise >= 0, span > 1 and sizes_per_budget >= 1")
    rng = np.random.default_rng(seed)
    runs = []
    for flops in np.atleast_1d(np.asarray(budgets, dtype=float)):
        n_opt, _ = law.optimal(flops)
        for n in n_opt * np.geomspace(1 / span, span, sizes_per_budget):
            tokens = flops / (6 * n)
            seen = tokens * np.geomspace(1e-2, 1.0, curve_points)
            curve_loss = law.loss(n, seen) * np.exp(
                noise * rng.standard_normal(curve_points)
            )
            curve = tuple(zip(6 * n * seen, curve_loss))
            runs.append(
                Run(
                    n_params=float(n),
                    tokens=float(tokens),
                    flops=float(flops),
                    loss=float(curve_loss[-1]),
                    curve=curve,
                )
            )
    return runs
