"""Optimisation: AdamW from scratch, weight-decay groups, the learning-rate schedule and
gradient clipping. Chapter 5.

Each piece is written from its equations and checked against the PyTorch component that does
the same job (``torch.optim.AdamW``, ``torch.optim.lr_scheduler``, ``clip_grad_norm_``). The
training loop (:mod:`llmbook.train`) uses our schedule and clipping, and by default
PyTorch's *fused* AdamW, which computes exactly our update in one kernel over all parameters
instead of a handful of small operations per tensor: the clear version teaches, the fused
one runs. :func:`make_optimizer` builds either, and ``benchmarks/train.py`` compares them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn
from torch import Tensor

OPTIMIZERS = ("ours", "torch", "fused")


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Kingma and Ba, 2015; Loshchilov and Hutter, 2019).
    Chapter 5 explains.

    For each parameter ``p`` with gradient ``g``, at step ``t = 1, 2, ...``::

        p <- p - lr * wd * p                  decoupled weight decay: shrink the weights
        m <- beta1 * m + (1 - beta1) * g      first moment: a running mean of the gradient
        v <- beta2 * v + (1 - beta2) * g^2    second moment: a running mean of its square
        m_hat = m / (1 - beta1^t)             bias correction: m and v start at zero
        v_hat = v / (1 - beta2^t)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)

    Each coordinate moves by about ``lr`` in the direction of its recent gradients, whatever
    the gradient's scale. The operations are ordered as in ``torch.optim.AdamW``'s
    single-tensor code, so the two agree bit for bit, and the state uses PyTorch's names
    (``step``, ``exp_avg``, ``exp_avg_sq``), so the state of one loads into the other.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"lr must be non-negative, got {lr}")
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"eps must be positive (it bounds steps where v = 0), "
                             f"got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, wd = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise TypeError("AdamW takes no sparse gradients; use dense embeddings")
                state = self.state[p]
                # moments start at zero; bias correction undoes the pull to zero
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                g, m, v = p.grad, state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"].item()

                p.mul_(1 - lr * wd)
                m.lerp_(g, 1 - beta1)  # m + (1 - beta1) (g - m) = beta1 m + (1 - beta1) g
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)

                bias_correction1 = 1 - beta1**t
                bias_correction2 = 1 - beta2**t
                # sqrt(v_hat) + eps
                denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / bias_correction1)  # lr m_hat / denom
        return loss


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer groups: matrices and embedding tables decay; vectors (biases, norm
    gains) do not.

    Weight decay pulls weights toward zero, a prior that suits the large matrices that mix
    features. A norm's gain or a bias is a per-feature scale or offset, and pulling it
    toward zero only fights the model (a gain of zero switches a feature off). The rule is
    by shape, as in GPT-2 and nanoGPT: a parameter with two or more dimensions decays. Tied
    weights appear once (``named_parameters`` skips repeats).
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def make_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    implementation: str = "fused",
) -> torch.optim.Optimizer:
    """AdamW over :func:`parameter_groups`, in one of three implementations of the same
    update: ``"ours"`` (:class:`AdamW`), ``"torch"`` (PyTorch's multi-tensor version) or
    ``"fused"`` (PyTorch's single-kernel version, the fastest on CPU and GPU alike)."""
    if implementation not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer implementation {implementation!r}; "
                         f"choose one of {OPTIMIZERS}")
    groups = parameter_groups(model, weight_decay)
    if implementation == "ours":
        return AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    fused = implementation == "fused"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                             fused=fused, foreach=None if fused else True)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class WarmupCosine:
    """The learning rate of each step: a linear warm-up, then a cosine decay to a floor.
    Chapter 5 explains.

    Step ``s`` (counted from 0) of ``total_steps`` gets::

        lr(s) = max_lr * (s + 1) / warmup_steps                       while s < warmup_steps
        lr(s) = min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2    after, p in [0, 1]

    with ``p = (s - warmup_steps) / (total_steps - warmup_steps)``. Warm-up lets Adam's
    second-moment estimates settle before the steps are large; the slow end of the cosine
    lets the weights settle into a minimum instead of bouncing around it. The schedule is a
    pure function of the step, so a resumed run needs nothing but the step to continue it.
    """

    max_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def __post_init__(self) -> None:
        if not 0 <= self.min_lr <= self.max_lr:
            raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={self.min_lr}, "
                             f"max_lr={self.max_lr}")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps, "
                             f"got {self.warmup_steps}, {self.total_steps}")

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        if step < self.warmup_steps:
            return self.max_lr * (step + 1) / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
        return self.min_lr + (self.max_lr - self.min_lr) * cosine


def clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``;
    return the norm before clipping. Chapter 5 explains.

    The global norm treats every gradient as one long vector, ``sqrt(sum_i ||g_i||^2)``.
    Scaling all of them by one factor keeps the direction of the update and only shortens
    it, so one bad batch with a huge gradient cannot throw the weights far. As in
    ``torch.nn.utils.clip_grad_norm_``, the factor is ``max_norm / (norm + 1e-6)`` capped at
    1, applied without a data-dependent branch (which would make the CPU wait for the GPU).
    Sharded gradients (FSDP's DTensors, Chapter 6) hold a slice each: the norm is taken over
    the whole model, every rank's slice, so that every rank scales by the same factor.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = _global_norm([g.detach() for g in grads])
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.detach().mul_(scale.to(g.dtype))
    return total


def _global_norm(grads: list[Tensor]) -> Tensor:
    """``sqrt(sum_i ||g_i||^2)`` over all gradients; a sharded gradient's squares are summed
    over the ranks that hold its shards."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(g, DTensor) for g in grads):
        norms = torch.stack([torch.linalg.vector_norm(g, 2.0) for g in grads])  # (n,)
        return torch.linalg.vector_norm(norms, 2.0)
    plain = [g for g in grads if not isinstance(g, DTensor)]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    squares = sum((torch.linalg.vector_norm(g, 2.0).float() ** 2 for g in plain),
                  torch.zeros((), device=grads[0].device))
    local = sum((torch.linalg.vector_norm(g.to_local(), 2.0).float() ** 2 for g in sharded),
                torch.zeros((), device=grads[0].device))
    if any(p.is_shard() for p in sharded[0].placements):  # one all-reduce for them all
        torch.distributed.all_reduce(local, group=sharded[0].device_mesh.get_group())
    return (squares + local).sqrt()
