"""ZeRO stage 1: shard the optimizer's state across data-parallel ranks. Chapter 6.

AdamW keeps two fp32 moments per parameter, 8 bytes per parameter, twice the weights
themselves. Under plain data parallelism every rank keeps all of them, identical. ZeRO-1
(Rajbhandari et al., 2020) lays all parameters end to end as one flat vector, cuts it
into ``world_size`` equal shards, and lets each rank keep the moments of its shard only
and update only that shard; an all-gather then gives every rank the whole updated
vector. The moments cost ``8 N / world_size`` bytes per rank instead of ``8 N``; the
result is the same update.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor


class ZeroAdamW:
    """AdamW whose state is sharded over the ranks of ``group`` (ZeRO-1). Chapter 6.

    ``params`` is an iterable of tensors or of parameter-group dicts (``"params"`` plus
    optional ``"lr"``/``"weight_decay"``), as for ``torch.optim.AdamW``; the update is
    the same (decoupled weight decay, bias correction; a parameter without a gradient is
    left as it is, but one step counter serves all). The gradients must already be the
    same on every rank (all-reduced by data parallelism) when :meth:`step` runs.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        group: dist.ProcessGroup | None = None,
    ):
        if not lr >= 0 or not eps >= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(
                f"need lr >= 0, eps >= 0 and betas in [0, 1), got lr={lr}, "
                f"eps={eps}, betas={betas}"
            )
        groups = list(params)
        if not groups:
            raise ValueError("ZeroAdamW got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        if not dist.is_initialized():
            raise RuntimeError(
                "ZeroAdamW shards over a process group: call "
                "torch.distributed.init_process_group first"
            )
        self.param_groups = [
            {"lr": lr, "weight_decay": weight_decay, **g, "params": list(g["params"])}
            for g in groups
        ]
        self.betas, self.eps, self.group = betas, eps, group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.params = [p for g in self.param_groups for p in g["params"]]
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError(
                "a parameter appears twice (tied weights?): pass each once"
            )
        numel = sum(p.numel() for p in self.params)
        self.shard_size = math.ceil(numel / self.world_size)
        # the flat vector, padded so that it splits evenly into world_size shards
        self.flat = torch.zeros(
            self.shard_size * self.world_size,
            dtype=self.params[0].dtype,
            device=self.params[0].device,
        )
        lo = self.rank * self.shard_size
        self.exp_avg = torch.zeros(
            self.shard_size, dtype=self.flat.dtype, device=self.flat.device
        )
        self.exp_avg_sq = torch.zeros_like(self.exp_avg)
        self.step_count = 0
        self.pieces = self._pieces(lo)

    def _pieces(self, lo: int) -> list[tuple[int, Tensor, slice, slice]]:
        """Where each parameter meets this rank's shard ``[lo, lo + shard_size)`` of the
        flat vector: (group index, parameter, its slice, the shard's slice)."""
        pieces, offset = [], 0
        for g_index, group in enumerate(self.param_groups):
            for p in group["params"]:
                start = max(offset, lo)
                stop = min(offset + p.numel(), lo + self.shard_size)
                if start < stop:
                    own = slice(start - offset, stop - offset)
                    pieces.append((g_index, p, own, slice(start - lo, stop - lo)))
                offset += p.numel()
        return pieces

    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds: its shard of the two moments."""
        return sum(
            t.numel() * t.element_size() for t in (self.exp_avg, self.exp_avg_sq)
        )

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """Update this rank's shard with AdamW, then all-gather every rank's shard."""
        self.step_count += 1
        beta1, beta2 = self.betas
        bias1 = 1 - beta1**self.step_count
        bias2_sqrt = math.sqrt(1 - beta2**self.step_count)
        shards = list(self.flat.chunk(self.world_size))  # views into the flat vector
        mine = shards[self.rank]
        for g_index, p, p_slice, s_slice in self.pieces:
            group = self.param_groups[g_index]
            lr, wd = group["lr"], group["weight_decay"]
            w = mine[s_slice]
            w.copy_(p.detach().reshape(-1)[p_slice])
            if p.grad is None:  # as torch.optim.AdamW: no gradient, no update
                continue
            g = p.grad.reshape(-1)[p_slice]
            m, v = self.exp_avg[s_slice], self.exp_avg_sq[s_slice]
            w.mul_(1 - lr * wd)  # decoupled weight decay
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
            w.addcdiv_(m, denom, value=-lr / bias1)
        dist.all_gather(shards, mine.clone(), group=self.group)
        offset = 0
        for p in self.params:
            p.copy_(self.flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def adamw_state_bytes(
    n_params: int, world_size: int = 1, bytes_per_value: int = 4
) -> int:
    """AdamW's two moments for ``n_params`` parameters, per rank, sharded ``world_size``
    ways (``world_size=1``: unsharded); the padding of the last shard included."""
    if n_params < 0 or world_size < 1:
        raise ValueError(
            f"need n_params >= 0 and world_size >= 1, got {n_params}, {world_size}"
        )
    return 2 * math.ceil(n_params / world_size) * bytes_per_value
