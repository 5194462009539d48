"""The three ways Hoffmann et al. (2022) estimated the compute-optimal frontier, as
functions of plain run records, and bootstrap intervals over runs. Chapter 7.

Each approach answers the same question, how ``N_opt`` and ``D_opt`` grow with the
budget ``C``, as ``N_opt proportional to C^a`` and ``D_opt proportional to C^b``:

1. :func:`approach1_envelope`: the lower envelope of all training curves; at each
   FLOP count, the run that reached the lowest loss says which ``N`` was best there.
2. :func:`approach2_isoflop`: IsoFLOP profiles; for each budget, the loss of several
   sizes against ``log N`` is a valley whose bottom, found with a parabola, is
   ``N_opt(C)``.
3. :func:`approach3_parametric`: fit ``L(N, D) = E + A / N^alpha + B / D^beta`` to
   every run and read the frontier off the formula.

A run is a :class:`Run` or a dict with the same keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from llmbook.scaling.laws import ChinchillaLaw


class ScalingFitError(ValueError):
    """The runs cannot support the fit asked of them (too few sizes, no valley, ...)."""


@dataclass(frozen=True)
class Run:
    """One finished training run. ``flops`` is its training compute (``6 N D``, or the
    count with attention); ``loss`` its final loss in nats per token; ``curve`` the
    ``(flops, loss)`` points measured along the way, in increasing FLOPs (Approach 1
    needs them)."""

    n_params: float
    tokens: float
    flops: float
    loss: float
    curve: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("n_params", "tokens", "flops", "loss"):
            value = getattr(self, name)
            if not (
                isinstance(value, (int, float, np.floating, np.integer))
                and math.isfinite(value)
                and value > 0
            ):
                raise ValueError(f"Run.{name} must be a positive number, got {value!r}")
        curve = tuple((float(c), float(v)) for c, v in self.curve)
        flops = np.array([c for c, _ in curve])
        if curve and (
            np.any(flops <= 0)
            or np.any(np.diff(flops) <= 0)
            or not all(v > 0 and math.isfinite(v) for _, v in curve)
        ):
            raise ValueError(
                "Run.curve must be (flops, loss) points with positive, strictly "
                "increasing FLOPs and positive finite losses"
            )
        object.__setattr__(self, "curve", curve)


def as_runs(records: Iterable[Run | Mapping]) -> list[Run]:
    """Runs from :class:`Run` objects or dicts with the keys ``n_params``, ``tokens``,
    ``flops``, ``loss`` and optionally ``curve``."""
    runs = [r if isinstance(r, Run) else Run(**r) for r in records]
    if not runs:
        raise ScalingFitError("no runs given")
    return runs


@dataclass(frozen=True)
class FrontierFit:
    """A fitted frontier ``N_opt = exp(log_n0) C^a``, ``D_opt = exp(log_d0) C^b``, and
    the points ``(flops, n_opt, d_opt)`` it was fitted to."""

    a: float
    b: float
    log_n0: float
    log_d0: float
    flops: np.ndarray
    n_opt: np.ndarray
    d_opt: np.ndarray
    details: dict = field(
        default_factory=dict
    )  # what each approach adds, for the figures

    def n_at(self, flops):
        return np.exp(self.log_n0) * np.asarray(flops, dtype=float) ** self.a

    def d_at(self, flops):
        return np.exp(self.log_d0) * np.asarray(flops, dtype=float) ** self.b


def fit_frontier(flops, n_opt, d_opt, **details) -> FrontierFit:
    """Least-squares lines through ``log N_opt`` and ``log D_opt`` against ``log C``."""
    c, n, d = (np.asarray(x, dtype=float) for x in (flops, n_opt, d_opt))
    if len(np.unique(c)) < 2:
        raise ScalingFitError("a frontier needs optima at two or more budgets")
    a, log_n0 = np.polyfit(np.log(c), np.log(n), 1)
    b, log_d0 = np.polyfit(np.log(c), np.log(d), 1)
    return FrontierFit(
        float(a), float(b), float(log_n0), float(log_d0), c, n, d, details
    )


# --------------------------------------------------------------------------------------
# Approach 1: the lower envelope of the training curves


def approach1_envelope(
    runs,
    *,
    n_points: int = 200,
    flops_range: tuple[float, float] | None = None,
    drop_edges: bool = True,
) -> FrontierFit:
    """Hoffmann et al.'s Approach 1. At ``n_points`` log-spaced FLOP counts, each
    curve's loss is interpolated (linearly in ``log C``, only inside the curve); the run
    with the lowest loss gives ``N_opt(C)``, and the tokens it had seen by then give
    ``D_opt(C)``.

    ``drop_edges`` leaves out counts won by the smallest or the largest size: there the
    true optimum may lie outside the sizes tried, and the envelope would flatten the
    slope. ``details``: ``envelope_flops``, ``envelope_loss`` (all counts, for the
    figure).
    """
    runs = as_runs(runs)
    if any(len(r.curve) < 2 for r in runs):
        raise ScalingFitError(
            "Approach 1 needs a training curve (2+ points) for every run"
        )
    # each curve as a (points, 2) array of log flops, log loss
    curves = [np.log(np.array(r.curve)) for r in runs]
    lo, hi = min(c[0, 0] for c in curves), max(c[-1, 0] for c in curves)
    if flops_range is not None:
        lo, hi = math.log(flops_range[0]), math.log(flops_range[1])
    grid = np.linspace(lo, hi, n_points)
    losses = np.full((len(runs), n_points), np.inf)
    for i, c in enumerate(curves):
        inside = (grid >= c[0, 0]) & (grid <= c[-1, 0])
        losses[i, inside] = np.interp(grid[inside], c[:, 0], c[:, 1])
    covered = np.isfinite(losses).any(axis=0)
    best = np.argmin(losses, axis=0)[covered]
    grid, envelope = grid[covered], np.exp(losses[best, np.flatnonzero(covered)])
    sizes = np.array([r.n_params for r in runs])
    keep = np.ones(len(best), bool)
    if drop_edges:
        keep = (sizes[best] > sizes.min()) & (sizes[best] < sizes.max())
    if len(np.unique(sizes[best][keep])) < 2:
        raise ScalingFitError(
            "the envelope's best run is the same size everywhere (or an edge size): "
            "try more sizes, or a flops_range where a size in the middle wins"
        )
    flops = np.exp(grid[keep])
    tokens_per_flop = np.array([r.tokens / r.flops for r in runs])[best[keep]]
    return fit_frontier(
        flops,
        sizes[best][keep],
        flops * tokens_per_flop,
        envelope_flops=np.exp(grid),
        envelope_loss=envelope,
    )


# --------------------------------------------------------------------------------------
# Approach 2: IsoFLOP profiles


def isoflop_groups(runs, rel_tol: float = 0.05) -> list[list[Run]]:
    """The runs grouped by budget: sorted by FLOPs, a run joins the group before it when
    its FLOPs are within ``rel_tol`` of that group's first run."""
    groups: list[list[Run]] = []
    for run in sorted(as_runs(runs), key=lambda r: r.flops):
        if groups and run.flops <= groups[-1][0].flops * (1 + rel_tol):
            groups[-1].append(run)
        else:
            groups.append([run])
    return groups


@dataclass(frozen=True)
class IsoFLOPProfile:
    """One budget's parabola ``loss = c2 x^2 + c1 x + c0`` with ``x = ln N``."""

    flops: float
    coefficients: tuple[float, float, float]  # c2, c1, c0
    n_opt: float
    loss_opt: float
    valid: bool  # convex, with its minimum inside the sizes tried


def isoflop_profile(group: list[Run]) -> IsoFLOPProfile:
    """Fit one budget's parabola; ``flops`` is the geometric mean of the group's."""
    x = np.log([r.n_params for r in group])
    y = np.array([r.loss for r in group])
    flops = float(np.exp(np.mean(np.log([r.flops for r in group]))))
    if len(np.unique(x)) < 3:
        return IsoFLOPProfile(flops, (math.nan,) * 3, math.nan, math.nan, False)
    c2, c1, c0 = (float(c) for c in np.polyfit(x, y, 2))
    x_opt = -c1 / (2 * c2) if c2 > 0 else math.nan
    valid = c2 > 0 and x.min() <= x_opt <= x.max()
    loss_opt = c0 - c1 * c1 / (4 * c2) if c2 > 0 else math.nan
    return IsoFLOPProfile(
        flops, (c2, c1, c0), math.exp(x_opt) if c2 > 0 else math.nan, loss_opt, valid
    )


def approach2_isoflop(runs, *, rel_tol: float = 0.05) -> FrontierFit:
    """Hoffmann et al.'s Approach 2: a parabola in ``ln N`` per budget, its minimum
    ``N_opt(C)``, and ``D_opt = C / (6 N_opt)``. Budgets whose parabola is not a valley
    with its bottom among the sizes tried are left out of the fit (they stay in
    ``details["profiles"]``, marked invalid)."""
    profiles = [isoflop_profile(g) for g in isoflop_groups(runs, rel_tol)]
    good = [p for p in profiles if p.valid]
    if len(good) < 2:
        raise ScalingFitError(
            f"only {len(good)} of {len(profiles)} budgets have a valley (3+ sizes, a "
            "convex parabola, its minimum inside the sizes): add sizes on both sides "
            "of the optimum"
        )
    flops = np.array([p.flops for p in good])
    n_opt = np.array([p.n_opt for p in good])
    return fit_frontier(flops, n_opt, flops / (6 * n_opt), profiles=profiles)


# --------------------------------------------------------------------------------------
# Approach 3: the parametric law, fitted as the paper did

# Hoffmann et al.'s grid of initial values for (alpha, beta, e, a, b), e = ln E, a = ln
# A, b = ln B: 5 * 5 * 5 * 6 * 6 = 4500 starting points.
PAPER_GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 25.1, 5.0),
    "b": np.arange(0.0, 25.1, 5.0),
}


def _objective(theta: np.ndarray, log_n, log_d, log_loss, delta: float):
    """The paper's objective and its gradient for parameters ``theta`` of shape (K, 5)
    (a, b, e, alpha, beta): sum over runs of Huber(LSE(a - alpha ln N, b - beta ln D, e)
    - ln L)."""
    a, b, e, alpha, beta = (theta[:, i : i + 1] for i in range(5))  # each (K, 1)
    shape = (theta.shape[0], log_n.shape[1])  # (K, R)
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, shape)])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    r = top + np.log(total) - log_loss  # (K, R): residuals in log loss
    huber = np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    dr = np.clip(r, -delta, delta) * (weights / total)  # (3, K, R): Huber' x softmax
    grad = np.stack(
        [
            dr[0].sum(1),
            dr[1].sum(1),
            dr[2].sum(1),
            -(dr[0] * log_n).sum(1),
            -(dr[1] * log_d).sum(1),
        ],
        axis=1,
    )
    return huber.sum(axis=1), grad


@dataclass(frozen=True)
class ParametricFit:
    """Approach 3's result: the fitted law, whose frontier gives ``a`` and ``b``."""

    law: ChinchillaLaw
    objective: float
    n_runs: int

    @property
    def a(self) -> float:
        return self.law.a

    @property
    def b(self) -> float:
        return self.law.b


def approach3_parametric(
    runs, *, delta: float = 1e-3, grid: Mapping | None = None, n_starts: int | None = 20
) -> ParametricFit:
    """Hoffmann et al.'s Approach 3: minimise the Huber loss (``delta = 1e-3``) between
    the predicted and measured log loss, with ``A, B, E`` as ``exp(a), exp(b), exp(e)``
    so that ``log L`` is a LogSumExp, by L-BFGS from a grid of initial values
    (:data:`PAPER_GRID`).

    The paper ran L-BFGS from every grid point; we evaluate the objective on the whole
    grid at once and start L-BFGS from the ``n_starts`` best points (``None``: all, as
    the paper), which finds the same minimum on our runs in a fraction of the time.
    """
    from scipy.optimize import minimize  # scipy is only needed here

    runs = as_runs(runs)
    if len({(r.n_params, r.tokens) for r in runs}) < 5:
        raise ScalingFitError(
            "Approach 3 fits 5 parameters: give runs at 5+ (N, D) points"
        )
    log_n = np.log([r.n_params for r in runs])[None, :]
    log_d = np.log([r.tokens for r in runs])[None, :]
    log_loss = np.log([r.loss for r in runs])[None, :]
    g = {**PAPER_GRID, **(grid or {})}
    mesh = np.meshgrid(g["a"], g["b"], g["e"], g["alpha"], g["beta"], indexing="ij")
    starts = np.stack([m.ravel() for m in mesh], axis=1)  # (K, 5)
    # screen the grid in blocks: a block's work arrays are (3, 512, runs)
    values = np.concatenate(
        [
            _objective(starts[i : i + 512], log_n, log_d, log_loss, delta)[0]
            for i in range(0, len(starts), 512)
        ]
    )
    order = np.argsort(values)[: n_starts or len(starts)]

    def f(theta):
        value, grad = _objective(theta[None, :], log_n, log_d, log_loss, delta)
        return float(value[0]), grad[0]

    best = None
    for start in starts[order]:
        result = minimize(
            f,
            start,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 5000, "ftol": 1e-16, "gtol": 1e-14},
        )
        if best is None or result.fun < best.fun:
            best = result
    a, b, e, alpha, beta = best.x
    if alpha <= 0 or beta <= 0:
        raise ScalingFitError(
            f"the fit found non-positive exponents alpha={alpha:.3g}, "
            f"beta={beta:.3g}: the runs do not show both power laws"
        )
    law = ChinchillaLaw(
        E=math.exp(e),
        A=math.exp(a),
        B=math.exp(b),
        alpha=float(alpha),
        beta=float(beta),
    )
    return ParametricFit(law, float(best.fun), len(runs))


# --------------------------------------------------------------------------------------
# How sure: the bootstrap over runs


@dataclass(frozen=True)
class Bootstrap:
    """Percentile intervals for ``a`` and ``b`` from fits to resampled runs."""

    a: tuple[float, float]
    b: tuple[float, float]
    a_samples: np.ndarray
    b_samples: np.ndarray
    n_failed: (
        int  # resamples the approach could not fit (e.g. a budget lost its valley)
    )
    level: float


def bootstrap(
    approach: Callable,
    runs,
    *,
    n_resamples: int = 100,
    seed: int = 0,
    level: float = 0.95,
    **kwargs,
) -> Bootstrap:
    """Refit ``approach(runs, **kwargs)`` to ``n_resamples`` resamples of the runs
    (drawn with replacement by ``numpy.random.default_rng(seed)``) and report the
    central ``level`` percentile interval of the exponents."""
    runs = as_runs(runs)
    if not 0 < level < 1 or n_resamples < 2:
        raise ValueError(
            f"need 0 < level < 1 and n_resamples >= 2, got {level}, {n_resamples}"
        )
    rng = np.random.default_rng(seed)
    a_s, b_s, failed = [], [], 0
    for _ in range(n_resamples):
        sample = [runs[i] for i in rng.integers(0, len(runs), len(runs))]
        try:
            fit = approach(sample, **kwargs)
        except ScalingFitError:
            failed += 1
            continue
        a_s.append(fit.a)
        b_s.append(fit.b)
    if len(a_s) < 2:
        raise ScalingFitError(
            f"{failed} of {n_resamples} resamples could not be fitted"
        )
    q = [50 * (1 - level), 50 * (1 + level)]
    a_lo, a_hi = np.percentile(a_s, q)
    b_lo, b_hi = np.percentile(b_s, q)
    return Bootstrap(
        (float(a_lo), float(a_hi)),
        (float(b_lo), float(b_hi)),
        np.array(a_s),
        np.array(b_s),
        failed,
        level,
    )
