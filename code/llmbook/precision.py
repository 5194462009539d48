"""Mixed precision: float16's range problem, the loss scaler that fixes it, and why
bfloat16 needs none. Chapter 6.

float16 has 10 mantissa bits but 5 exponent bits: it is precise and overflows at 65504,
and small gradients (below about 6e-8) round to zero. bfloat16 keeps float32's 8
exponent bits and has 7 mantissa bits: the range of float32, the precision of about two
and a half decimal digits. Training in float16 therefore multiplies the loss by a large
*scale* so that gradients stay representable, divides it out before the update, and,
when a gradient overflows anyway, skips that step and halves the scale (Micikevicius et
al., 2018). :class:`DynamicLossScaler` is that recipe from scratch; the tests check it
against ``torch.amp.GradScaler``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

FP16_MAX = torch.finfo(torch.float16).max  # 65504


def overflow_example(value: float = 70000.0) -> dict[str, float]:
    """A number that float16 cannot hold but bfloat16 can: returns ``value`` as stored
    in float16 (``inf``), bfloat16 (rounded, finite) and float32."""
    x = torch.tensor(value, dtype=torch.float32)
    return {"float32": x.item(), "float16": x.half().item(),
            "bfloat16": x.bfloat16().item()}


def precision_example(step: float = 2.0**-8) -> dict[str, float]:
    """``1 + step`` stored in each dtype: with 7 mantissa bits bfloat16 cannot tell
    ``1 + 2^-8`` from 1 (its spacing at 1 is ``2^-7``); float16 (spacing ``2^-10``)
    can."""
    x = torch.tensor(1.0 + step, dtype=torch.float32)
    return {"float32": x.item(), "float16": x.half().item(),
            "bfloat16": x.bfloat16().item()}


class DynamicLossScaler:
    """Loss scaling for float16 training, from scratch (the algorithm of
    ``torch.amp.GradScaler``). Chapter 6.

    Use: ``scaler.scale(loss).backward()``, ``scaler.step(optimizer)``,
    ``scaler.update()``.

    - :meth:`scale` multiplies the loss by ``S``, so every gradient is ``S`` times
      larger;
    - :meth:`unscale_` divides the gradients by ``S`` and notes whether any is inf or
      NaN;
    - :meth:`step` runs the optimizer only if all gradients are finite;
    - :meth:`update` halves ``S`` after an overflow (``backoff_factor``) and doubles it
      after ``growth_interval`` finite steps in a row (``growth_factor``), so the scale
      settles just below where gradients overflow.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        if init_scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1:
            raise ValueError(
                "need init_scale > 0, growth_factor > 1 and 0 < backoff_factor < 1, "
                f"got "
                f"{init_scale}, {growth_factor}, {backoff_factor}")
        if growth_interval < 1:
            raise ValueError(f"growth_interval must be a positive int, got "
                             f"{growth_interval}")
        self.scale_value = float(init_scale)
        self.growth_factor, self.backoff_factor = growth_factor, backoff_factor
        self.growth_interval = growth_interval
        self.good_steps = 0  # finite steps since the last change of scale
        self.found_inf = False
        self._unscaled = False

    def scale(self, loss: Tensor) -> Tensor:
        return loss * self.scale_value

    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Divide every gradient by the scale, in place; True if any is inf or NaN."""
        if self._unscaled:
            raise RuntimeError("unscale_() was already called since the last update()")
        # 1/S in float64, then float32, as GradScaler does: exact for powers of two.
        inv = torch.tensor(self.scale_value, dtype=torch.float64).reciprocal().float()
        found = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(inv.to(p.grad.dtype))
                    found = found or not bool(torch.isfinite(p.grad).all())
        self.found_inf, self._unscaled = found, True
        return found

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale (if not done yet) and step, unless a gradient overflowed. Returns
        whether the optimizer stepped."""
        if not self._unscaled:
            self.unscale_(optimizer)
        if self.found_inf:
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        if self.found_inf:
            self.scale_value *= self.backoff_factor
            self.good_steps = 0
        else:
            self.good_steps += 1
            if self.good_steps == self.growth_interval:
                self.scale_value *= self.growth_factor
                self.good_steps = 0
        self.found_inf, self._unscaled = False, False

    def get_scale(self) -> float:
        return self.scale_value


def scaled_step(loss_fn: Callable[[], Tensor], optimizer: torch.optim.Optimizer,
                scaler) -> Tensor:
    """One training step with loss scaling; ``scaler`` is a :class:`DynamicLossScaler`
    or a ``torch.amp.GradScaler`` (same interface). Returns the unscaled loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()
