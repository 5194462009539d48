"""From a budget to a model: compute-optimal tables, the data-constrained law of
Muennighoff et al. (2023), inference-aware budgeting (Sardana and Frankle, 2023) and
wall time. Chapter 7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llmbook.measure import PEAK_FLOPS
from llmbook.scaling.laws import (
    HOFFMANN_TABLE3,
    LAWS,
    ChinchillaLaw,
    tokens_per_parameter_rule,
)

# --------------------------------------------------------------------------------------
# Budget tables


def budget_table(
    budgets=None, laws: dict[str, ChinchillaLaw] | None = None, ratio: float = 20.0
) -> list[dict]:
    """For each budget (default ``1e18, 1e19, ..., 1e26`` FLOPs) and each rule (each
    law's frontier, and ``ratio`` tokens per parameter), the compute-optimal
    ``n_params``, ``tokens``, ``tokens_per_parameter`` and, for the laws, the predicted
    ``loss``."""
    budgets = (
        10.0 ** np.arange(18, 27) if budgets is None else np.asarray(budgets, float)
    )
    laws = LAWS if laws is None else laws
    rows = []
    for flops in budgets:
        for name, law in laws.items():
            n, d = law.optimal(flops)
            rows.append(
                {
                    "flops": float(flops),
                    "rule": name,
                    "n_params": n,
                    "tokens": d,
                    "tokens_per_parameter": d / n,
                    "loss": law.loss(n, d),
                }
            )
        n, d = tokens_per_parameter_rule(flops, ratio)
        rows.append(
            {
                "flops": float(flops),
                "rule": f"{ratio:g} tokens/param",
                "n_params": n,
                "tokens": d,
                "tokens_per_parameter": ratio,
                "loss": math.nan,
            }
        )
    return rows


def table3_comparison(
    laws: dict[str, ChinchillaLaw] | None = None, ratio: float = 20.0
) -> list[dict]:
    """Each row of Hoffmann et al.'s Table 3 beside what each law (and ``ratio`` tokens
    per parameter) gives for the same FLOPs, with the relative differences ``n_rel`` and
    ``d_rel`` (``ours / published - 1``)."""
    laws = LAWS if laws is None else laws
    rows = []
    for row in HOFFMANN_TABLE3:
        rules = {name: law.optimal(row.flops) for name, law in laws.items()}
        rules[f"{ratio:g} tokens/param"] = tokens_per_parameter_rule(row.flops, ratio)
        for name, (n, d) in rules.items():
            rows.append(
                {
                    "flops": row.flops,
                    "rule": name,
                    "published_n": row.n_params,
                    "published_tokens": row.tokens,
                    "n_params": n,
                    "tokens": d,
                    "n_rel": n / row.n_params - 1,
                    "d_rel": d / row.tokens - 1,
                }
            )
    return rows


# --------------------------------------------------------------------------------------
# When data runs out: Muennighoff et al. (2023)


def effective_count(unique: float, repetitions: float, r_star: float) -> float:
    """``U + U R* (1 - exp(-R / R*))``: ``U`` unique items seen ``1 + R`` times are
    worth this many fresh ones. Repeats are nearly as good as new while ``R`` is small
    against ``R*``, and all of them together are never worth more than ``R* U``."""
    if not (unique > 0 and repetitions >= 0 and r_star > 0):
        raise ValueError("need unique > 0, repetitions >= 0 and r_star > 0")
    return unique + unique * r_star * (1 - math.exp(-repetitions / r_star))


@dataclass(frozen=True)
class DataConstrainedLaw:
    """Muennighoff et al. (2023): ``L = E + A / N'^alpha + B / D'^beta`` with
    the effective data ``D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*))``, ``R_D = D / U_D -
    1`` epochs repeated, and the effective parameters ``N'`` of the same form: ``U_N``
    is the size that is compute-optimal for ``U_D`` tokens (here ``U_D /
    tokens_per_parameter``), ``R_N = N / U_N - 1`` the excess, which pays less and less.
    ``R_D* = 15.4`` and ``R_N* = 5.3`` are the paper's fitted values (15.39 and
    5.31)."""

    base: ChinchillaLaw
    r_d_star: float = 15.4
    r_n_star: float = 5.3
    tokens_per_parameter: float = 20.0

    def __post_init__(self) -> None:
        if not (
            self.r_d_star > 0 and self.r_n_star > 0 and self.tokens_per_parameter > 0
        ):
            raise ValueError(
                "r_d_star, r_n_star and tokens_per_parameter must be positive"
            )

    def effective_tokens(self, tokens: float, unique_tokens: float) -> float:
        if not 0 < unique_tokens <= tokens:
            raise ValueError(
                f"need 0 < unique_tokens <= tokens, got {unique_tokens}, {tokens}"
            )
        return effective_count(unique_tokens, tokens / unique_tokens - 1, self.r_d_star)

    def effective_params(self, n_params: float, unique_tokens: float) -> float:
        base_n = min(n_params, unique_tokens / self.tokens_per_parameter)
        return effective_count(base_n, n_params / base_n - 1, self.r_n_star)

    def loss(self, n_params: float, tokens: float, unique_tokens: float) -> float:
        """The predicted loss of ``n_params`` trained on ``tokens`` tokens drawn from
        ``unique_tokens`` unique ones (``tokens / unique_tokens`` epochs)."""
        return self.base.loss(
            self.effective_params(n_params, unique_tokens),
            self.effective_tokens(tokens, unique_tokens),
        )

    def repetition_penalty(
        self, n_params: float, tokens: float, unique_tokens: float
    ) -> float:
        """The relative loss increase of repeating ``unique_tokens`` against training on
        ``tokens`` fresh tokens."""
        fresh = self.loss(n_params, tokens, tokens)
        return self.loss(n_params, tokens, unique_tokens) / fresh - 1


def nearly_free_epochs(
    law: DataConstrainedLaw,
    n_params: float,
    unique_tokens: float,
    tolerance: float = 0.01,
    max_epochs: float = 1e4,
) -> float:
    """The most epochs over ``unique_tokens`` that ``n_params`` can train for while its
    loss stays within ``tolerance`` (relative) of the loss on as many fresh tokens. The
    penalty grows with the epochs, so bisection in ``log epochs`` finds the crossing.

    The penalty is bounded (repeats are worth at most ``R_D* U_D`` fresh tokens, and the
    fresh-data loss flattens too), so it may never reach ``tolerance``: then ``inf``.
    """
    if not 0 < tolerance < 1:
        raise ValueError(
            f"tolerance is a relative loss increase in (0, 1), got {tolerance}"
        )

    def penalty(epochs: float) -> float:
        return law.repetition_penalty(n_params, epochs * unique_tokens, unique_tokens)

    if penalty(max_epochs) <= tolerance:
        return math.inf
    lo, hi = 0.0, math.log(max_epochs)  # penalty(1 epoch) = 0 <= tolerance
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if penalty(math.exp(mid)) <= tolerance else (lo, mid)
    return math.exp(lo)


# --------------------------------------------------------------------------------------
# Beyond training compute: Sardana and Frankle (2023)


@dataclass(frozen=True)
class InferenceAwareChoice:
    n_params: float
    tokens: float
    training_flops: float  # 6 N D
    inference_flops: float  # 2 N per token served

    @property
    def total_flops(self) -> float:
        return self.training_flops + self.inference_flops

    @property
    def tokens_per_parameter(self) -> float:
        return self.tokens / self.n_params


def tokens_for_loss(law: ChinchillaLaw, n_params, target_loss: float):
    """The training tokens ``n_params`` needs to reach ``target_loss``: solving ``B /
    D^beta = L - E - A / N^alpha`` for ``D``; ``inf`` where the model is too small to
    ever get there."""
    n = np.asarray(n_params, dtype=float)
    gap = target_loss - law.E - law.A / n**law.alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(
            gap > 0, (law.B / np.where(gap > 0, gap, 1.0)) ** (1 / law.beta), np.inf
        )
    return float(d) if d.ndim == 0 else d


def flops_for_loss(law: ChinchillaLaw, target_loss: float) -> float:
    """The smallest budget whose compute-optimal model reaches ``target_loss``; ``inf``
    at or below the irreducible loss ``E``. On the frontier both terms of ``L - E`` fall as
    the same power of ``C`` (``a alpha = b beta``), so ``L_opt(C) = E + K (C/6)^-g`` with
    ``K = A G^-alpha + B G^beta`` and ``g = alpha beta / (alpha + beta)``, solved for
    ``C``."""
    if not math.isfinite(target_loss):
        raise ValueError(f"target_loss must be finite, got {target_loss}")
    if target_loss <= law.E:
        return math.inf
    k = law.A * law.G ** -law.alpha + law.B * law.G ** law.beta
    g = law.alpha * law.beta / (law.alpha + law.beta)
    return 6 * (k / (target_loss - law.E)) ** (1 / g)


def inference_aware_optimum(
    law: ChinchillaLaw, target_loss: float, inference_tokens: float
) -> InferenceAwareChoice:
    """The ``N, D`` with ``law.loss(N, D) = target_loss`` that minimise ``6 N D + 2 N
    D_inf`` for ``D_inf = inference_tokens`` served in the model's lifetime. Along the
    curve of equal loss, ``D(N)`` falls from infinity (at the smallest ``N`` that can
    reach the target) while ``N`` grows, so the cost has one minimum in ``log N``: a
    coarse grid brackets it and bounded Brent's method refines it."""
    from scipy.optimize import minimize_scalar

    if not target_loss > law.E:
        raise ValueError(
            f"target_loss {target_loss} must exceed the law's floor E={law.E}"
        )
    if not inference_tokens >= 0:
        raise ValueError(
            f"inference_tokens must be non-negative, got {inference_tokens}"
        )
    # the smallest N that can reach the target with infinite data: A / N^alpha = L - E
    log_n_min = math.log(law.A / (target_loss - law.E)) / law.alpha

    def log_cost(log_n: float) -> float:
        n = math.exp(log_n)
        d = tokens_for_loss(law, n, target_loss)
        return (
            math.log(6 * n * d + 2 * n * inference_tokens)
            if math.isfinite(d)
            else math.inf
        )

    grid = log_n_min + np.geomspace(1e-6, 40.0, 400)  # up to e^40 times the smallest N
    costs = np.array([log_cost(x) for x in grid])
    i = int(np.argmin(costs))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = minimize_scalar(
        log_cost, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10}
    )
    n = math.exp(best.x)
    d = tokens_for_loss(law, n, target_loss)
    return InferenceAwareChoice(n, d, 6 * n * d, 2 * n * inference_tokens)


# --------------------------------------------------------------------------------------
# FLOPs and hours


def peak_flops(gpu: str) -> float:
    """Dense bfloat16 peak FLOP/s of ``gpu`` (:data:`llmbook.measure.PEAK_FLOPS`, any
    case)."""
    table = {name.lower(): peaks["bfloat16"] for name, peaks in PEAK_FLOPS.items()}
    if gpu.lower() not in table:
        raise ValueError(f"unknown GPU {gpu!r}; choose one of {sorted(table)}")
    return table[gpu.lower()]


def _check_hardware(gpus: int, gpu: str, mfu: float) -> float:
    if not (isinstance(gpus, int) and gpus >= 1):
        raise ValueError(f"gpus must be a positive integer, got {gpus!r}")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu is a fraction of peak, in (0, 1]; got {mfu}")
    return gpus * peak_flops(gpu) * mfu


def flops_for_hours(hours: float, *, gpus: int, gpu: str, mfu: float) -> float:
    """The training FLOPs ``gpus`` GPUs deliver in ``hours`` at model FLOPs utilisation
    ``mfu``."""
    if not (hours > 0 and math.isfinite(hours)):
        raise ValueError(f"hours must be positive, got {hours}")
    return hours * 3600 * _check_hardware(gpus, gpu, mfu)


def hours_for_flops(flops: float, *, gpus: int, gpu: str, mfu: float) -> float:
    """The wall-clock hours ``flops`` take on ``gpus`` GPUs at utilisation ``mfu``."""
    if not flops > 0:
        raise ValueError(f"flops must be positive, got {flops}")
    return flops / _check_hardware(gpus, gpu, mfu) / 3600
