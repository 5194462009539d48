"""The Chinchilla law L(N, D) = E + A / N^alpha + B / D^beta, its compute-optimal
frontier, and the published numbers it is judged against, as data with their sources.
Chapter 7.

``N`` counts parameters, ``D`` training tokens and ``C = 6 N D`` training FLOPs; losses
are in nats per token on the paper's data (MassiveText), so a law's ``E`` means nothing
on Shakespeare: our own runs get their own fit (:mod:`llmbook.scaling.fit`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChinchillaLaw:
    """``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al., 2022).
    Chapter 7.

    ``E`` is the loss of a perfect model of the data (its entropy); the two power laws
    are what a finite model and a finite training run add to it.
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "fitted"
    source: str = ""  # a bibtex key in book/references.bib

    def __post_init__(self) -> None:
        for field in ("A", "B", "alpha", "beta"):
            value = getattr(self, field)
            if not (
                isinstance(value, (int, float, np.number))
                and value > 0
                and math.isfinite(value)
            ):
                raise ValueError(
                    f"ChinchillaLaw.{field} must be a positive number, got {value!r}"
                )
        if not (math.isfinite(self.E) and self.E >= 0):
            raise ValueError(
                f"ChinchillaLaw.E is a loss floor, so non-negative; got {self.E!r}"
            )

    def loss(self, n_params, tokens):
        """The predicted loss of ``n_params`` parameters trained on ``tokens`` tokens
        (numbers or arrays that broadcast)."""
        n, d = np.asarray(n_params, dtype=float), np.asarray(tokens, dtype=float)
        if np.any(n <= 0) or np.any(d <= 0):
            raise ValueError("n_params and tokens must be positive")
        out = self.E + self.A / n**self.alpha + self.B / d**self.beta
        return float(out) if out.ndim == 0 else out

    # -- the compute-optimal frontier (Hoffmann et al., 2022) -----------------------

    @property
    def a(self) -> float:
        """The exponent of ``N_opt proportional to C^a``: ``beta / (alpha + beta)``."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """The exponent of ``D_opt proportional to C^b``: ``alpha / (alpha + beta)``."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        """``(alpha A / (beta B))^(1 / (alpha + beta))``: the frontier's scale."""
        return (self.alpha * self.A / (self.beta * self.B)) ** (
            1.0 / (self.alpha + self.beta)
        )

    def optimal(self, flops):
        """``(N_opt, D_opt)`` for a budget of ``flops``: minimising ``L`` subject to
        ``6 N D = C`` gives ``N = G (C/6)^a`` and ``D = G^-1 (C/6)^b``."""
        c = np.asarray(flops, dtype=float)
        if np.any(c <= 0):
            raise ValueError(f"a FLOP budget must be positive, got {flops!r}")
        n, d = self.G * (c / 6) ** self.a, (c / 6) ** self.b / self.G
        return (float(n), float(d)) if c.ndim == 0 else (n, d)

    def optimal_loss(self, flops):
        """The loss of the compute-optimal model for ``flops``."""
        return self.loss(*self.optimal(flops))

    def to_dict(self) -> dict:
        return {
            "E": self.E,
            "A": self.A,
            "B": self.B,
            "alpha": self.alpha,
            "beta": self.beta,
        }


# Hoffmann et al. (2022): Approach 3 fitted to their runs, as published.
HOFFMANN = ChinchillaLaw(
    E=1.69,
    A=406.4,
    B=410.7,
    alpha=0.34,
    beta=0.28,
    name="hoffmann",
    source="hoffmann2022training",
)

# Besiroglu et al. (2024) refitted Approach 3 to the points they extracted from the
# paper's Figure 4 and found the published constants inconsistent with the paper's own
# data and with its Approaches 1 and 2 (a = 0.46 here against about 0.5 there); their
# fit gives a = 0.51.
BESIROGLU = ChinchillaLaw(
    E=1.82,
    A=482.0,
    B=2085.4,
    alpha=0.348,
    beta=0.366,
    name="besiroglu",
    source="besiroglu2024chinchilla",
)

# Muennighoff et al. (2023): the base constants of their fitted data-constrained law
# (:class:`llmbook.scaling.budget.DataConstrainedLaw`).
MUENNIGHOFF = ChinchillaLaw(
    E=1.87,
    A=521.0,
    B=1488.0,
    alpha=0.353,
    beta=0.353,
    name="muennighoff",
    source="muennighoff2023scaling",
)

LAWS: dict[str, ChinchillaLaw] = {law.name: law for law in (HOFFMANN, BESIROGLU)}

# The exponent a of N_opt proportional to C^a as the papers report it: Hoffmann et al.'s
# three approaches (Table 2) and Kaplan et al. (2020), who found larger models should
# get most of a bigger budget.
PUBLISHED_EXPONENTS: dict[str, float] = {
    "hoffmann approach 1": 0.50,
    "hoffmann approach 2": 0.49,
    "hoffmann approach 3": 0.46,
    "kaplan": 0.73,
}


@dataclass(frozen=True)
class PublishedRow:
    """One row of Hoffmann et al. (2022), Table 3: the compute-optimal FLOPs and tokens
    their Approach 1 projects for a model size."""

    n_params: float
    flops: float
    tokens: float


# Hoffmann et al. (2022), Table 3, as printed (the FLOPs and tokens are rounded there).
HOFFMANN_TABLE3: tuple[PublishedRow, ...] = (
    PublishedRow(400e6, 1.92e19, 8.0e9),
    PublishedRow(1e9, 1.21e20, 20.2e9),
    PublishedRow(10e9, 1.23e22, 205.1e9),
    PublishedRow(67e9, 5.76e23, 1.5e12),
    PublishedRow(175e9, 3.85e24, 3.7e12),
    PublishedRow(280e9, 9.90e24, 5.9e12),
    PublishedRow(520e9, 3.43e25, 11.0e12),
    PublishedRow(1e12, 1.27e26, 21.2e12),
    PublishedRow(10e12, 1.30e28, 216.2e12),
)


@dataclass(frozen=True)
class TrainedModel:
    """A published model: its parameters and pretraining tokens, as reported."""

    name: str
    n_params: float
    tokens: float
    source: str

    @property
    def tokens_per_parameter(self) -> float:
        return self.tokens / self.n_params

    @property
    def flops(self) -> float:
        return 6 * self.n_params * self.tokens


REAL_MODELS: tuple[TrainedModel, ...] = (
    TrainedModel("GPT-3 175B", 175e9, 300e9, "brown2020language"),
    TrainedModel("Gopher 280B", 280e9, 300e9, "rae2021scaling"),
    TrainedModel("Chinchilla 70B", 70e9, 1.4e12, "hoffmann2022training"),
    TrainedModel("PaLM 540B", 540e9, 780e9, "chowdhery2023palm"),
    TrainedModel("LLaMA 7B", 6.7e9, 1.0e12, "touvron2023llama"),
    TrainedModel("LLaMA 65B", 65.2e9, 1.4e12, "touvron2023llama"),
    TrainedModel("Llama 2 70B", 70e9, 2.0e12, "touvron2023llama2"),
    TrainedModel("Llama 3 8B", 8e9, 15e12, "dubey2024llama3"),
)


def tokens_per_parameter_rule(flops, ratio: float = 20.0):
    """``(N, D)`` with ``D = ratio * N`` and ``6 N D = C``: the rule of thumb the
    Chinchilla paper's Approaches 1 and 2 imply (about 20 tokens per parameter)."""
    c = np.asarray(flops, dtype=float)
    if np.any(c <= 0) or not ratio > 0:
        raise ValueError(f"flops and ratio must be positive, got {flops!r}, {ratio!r}")
    n = np.sqrt(c / (6 * ratio))
    return (float(n), float(ratio * n)) if c.ndim == 0 else (n, ratio * n)
