"""Tensor parallelism (Megatron-LM, Shoeybi et al., 2019): split each weight matrix
across ranks. Chapter 6.

A linear layer ``y = x W^T`` can be split two ways. **Column-parallel**: each rank holds
some output features (rows of ``W``) and computes those outputs from the whole input.
**Row-parallel**: each rank holds some input features (columns of ``W``), multiplies
its part of the input, and the partial outputs are summed across ranks. An MLP is a
column-parallel layer followed by a row-parallel one, with the nonlinearity applied to
each rank's own features in between: one all-reduce in the forward pass and one in the
backward. Attention splits the same way by heads.

Two autograd functions carry the communication (Megatron's ``f`` and ``g``):
:func:`copy_to_parallel` is the identity forward and an all-reduce of the input gradient
backward; :func:`reduce_from_parallel` is an all-reduce forward and the identity
backward.

Fused weights need care: ``[Q|K|V]`` and ``[gate|up]`` are stored as one matrix, and a
contiguous split would give rank 0 all of ``Q`` and rank 1 the keys and values. Each
part is split on its own (:func:`shard_parts`). :func:`parallelize_mlp` and
:func:`parallelize_attention` are the production path with
``torch.distributed.tensor.parallel``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh

from llmbook.attention import CausalSelfAttention
from llmbook.layers import ACTIVATIONS, GATED_ACTIVATIONS, MLP, GatedMLP


class _CopyToParallel(torch.autograd.Function):
    """Forward: every rank uses the whole input. Backward: each rank's input gradient
    covers only its features' contribution, so the ranks sum them."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromParallel(torch.autograd.Function):
    """Forward: sum the ranks' partial outputs. Backward: the sum's gradient reaches
    every partial output unchanged."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def copy_to_parallel(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    return _CopyToParallel.apply(x, group)


def reduce_from_parallel(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    return _ReduceFromParallel.apply(x, group)


def shard_parts(
    tensor: Tensor, parts: list[int] | None, dim: int, rank: int, world: int
) -> Tensor:
    """Rank ``rank``'s share of ``tensor`` along ``dim``: the tensor is cut into
    ``parts`` (sizes along ``dim``; None: one part), each part into ``world`` equal
    slices, and the rank's slices of all parts are concatenated. ``[Q|K|V]`` with parts
    ``[q, k, v]`` gives rank r ``[Q_r|K_r|V_r]``."""
    parts = [tensor.shape[dim]] if parts is None else list(parts)
    if sum(parts) != tensor.shape[dim]:
        raise ValueError(
            f"parts {parts} do not add up to the size {tensor.shape[dim]} of dim {dim}"
        )
    if any(size % world for size in parts):
        raise ValueError(f"every part {parts} must split evenly over {world} ranks")
    pieces = [part.chunk(world, dim)[rank] for part in tensor.split(parts, dim)]
    return torch.cat(pieces, dim).contiguous()


def _group_rank_world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not dist.is_initialized():
        raise RuntimeError(
            "tensor parallelism needs a process group: call "
            "torch.distributed.init_process_group first"
        )
    return dist.get_rank(group), dist.get_world_size(group)


class ColumnParallelLinear(nn.Module):
    """``y = x W^T + b`` with this rank's rows of ``W`` (output features): the input is
    whole, the output holds this rank's features only."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        group: dist.ProcessGroup | None = None,
    ):
        super().__init__()
        self.group = group
        self.weight = nn.Parameter(weight)  # (out / world, in)
        self.bias = None if bias is None else nn.Parameter(bias)  # (out / world,)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        parts: list[int] | None = None,
        group: dist.ProcessGroup | None = None,
    ) -> ColumnParallelLinear:
        """This rank's column shard of ``linear``, each of ``parts`` split apart."""
        rank, world = _group_rank_world(group)
        weight = shard_parts(linear.weight.detach(), parts, 0, rank, world)
        bias = linear.bias
        bias = (
            None if bias is None else shard_parts(bias.detach(), parts, 0, rank, world)
        )
        return cls(weight, bias, group)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(copy_to_parallel(x, self.group), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """``y = sum over ranks of x_r W_r^T, + b``: this rank's columns of ``W`` (input
    features) times its part of the input; the bias is added once, after the sum."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        group: dist.ProcessGroup | None = None,
    ):
        super().__init__()
        self.group = group
        self.weight = nn.Parameter(weight)  # (out, in / world)
        self.bias = None if bias is None else nn.Parameter(bias)  # (out,), replicated

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        parts: list[int] | None = None,
        group: dist.ProcessGroup | None = None,
    ) -> RowParallelLinear:
        rank, world = _group_rank_world(group)
        weight = shard_parts(linear.weight.detach(), parts, 1, rank, world)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(weight, bias, group)

    def forward(self, x: Tensor) -> Tensor:
        y = reduce_from_parallel(F.linear(x, self.weight), self.group)
        return y if self.bias is None else y + self.bias


class TensorParallelMLP(nn.Module):
    """An MLP whose ``fc`` produces this rank's hidden features and whose ``proj`` is
    row-parallel (it sums the ranks' contributions). For a gated MLP, ``fc``'s local
    output
    is ``[gate_r | up_r]``, so the unit-by-unit product needs no communication."""

    def __init__(self, fc: nn.Module, proj: nn.Module, activation: str, gated: bool):
        super().__init__()
        self.fc, self.proj, self.gated = fc, proj, gated
        self.act = (GATED_ACTIVATIONS if gated else ACTIVATIONS)[activation]

    @classmethod
    def from_mlp(
        cls, mlp: MLP | GatedMLP, group: dist.ProcessGroup | None = None
    ) -> TensorParallelMLP:
        """This rank's share of a single-process ``mlp``, from scratch."""
        gated, activation = _mlp_kind(mlp)
        d_ff = mlp.proj.in_features
        fc = ColumnParallelLinear.from_linear(
            mlp.fc, [d_ff, d_ff] if gated else None, group
        )
        return cls(
            fc, RowParallelLinear.from_linear(mlp.proj, None, group), activation, gated
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)  # (B, T, d_ff / world), or twice that when gated
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.proj(h)  # (B, T, C), summed over ranks


def _mlp_kind(mlp: nn.Module) -> tuple[bool, str]:
    if not isinstance(mlp, (MLP, GatedMLP)):
        raise TypeError(
            f"expected an llmbook MLP or GatedMLP, got {type(mlp).__name__}"
        )
    table = GATED_ACTIVATIONS if isinstance(mlp, GatedMLP) else ACTIVATIONS
    name = next(k for k, f in table.items() if f is mlp.act)
    return isinstance(mlp, GatedMLP), name


class TensorParallelAttention(nn.Module):
    """Causal self-attention over this rank's heads: ``qkv`` gives ``[Q_r|K_r|V_r]``,
    the rank's query heads and their key/value heads; ``proj`` is row-parallel over the
    heads' outputs. Attention itself never mixes heads, so it needs no communication."""

    def __init__(
        self,
        qkv: nn.Module,
        proj: nn.Module,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
    ):
        super().__init__()
        self.qkv, self.proj = qkv, proj
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim

    @classmethod
    def from_attention(
        cls, attn: CausalSelfAttention, group: dist.ProcessGroup | None = None
    ) -> TensorParallelAttention:
        """This rank's heads of a single-process ``attn``, from scratch."""
        _, world = _group_rank_world(group)
        H, H_kv, hd = _local_heads(attn, world)
        qkv = ColumnParallelLinear.from_linear(attn.qkv, _qkv_parts(attn), group)
        return cls(
            qkv, RowParallelLinear.from_linear(attn.proj, None, group), H, H_kv, hd
        )

    def forward(self, x: Tensor, *, rotary: nn.Module | None = None) -> Tensor:
        B, T, _ = x.shape
        H, H_kv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.qkv(x).split([H * hd, H_kv * hd, H_kv * hd], dim=-1)
        q = q.view(B, T, H, hd).transpose(1, 2)  # (B, H / world, T, hd)
        k = k.view(B, T, H_kv, hd).transpose(1, 2)  # (B, H_kv / world, T, hd)
        v = v.view(B, T, H_kv, hd).transpose(1, 2)
        if rotary is not None:
            q, k = rotary(q), rotary(k)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=H_kv != H
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, H * hd))  # (B, T, C), summed


def _qkv_parts(attn: CausalSelfAttention) -> list[int]:
    hd = attn.head_dim
    return [attn.n_heads * hd, attn.n_kv_heads * hd, attn.n_kv_heads * hd]


def _local_heads(attn: CausalSelfAttention, world: int) -> tuple[int, int, int]:
    if not isinstance(attn, CausalSelfAttention):
        raise TypeError(f"expected a CausalSelfAttention, got {type(attn).__name__}")
    if attn.n_heads % world or attn.n_kv_heads % world:
        raise ValueError(
            f"n_heads={attn.n_heads} and n_kv_heads={attn.n_kv_heads} must "
            f"both divide by the tensor-parallel size {world}: ranks split "
            "whole heads"
        )
    if attn.dropout:
        raise ValueError(
            "tensor-parallel attention here has no dropout; build the "
            "model with dropout=0"
        )
    return attn.n_heads // world, attn.n_kv_heads // world, attn.head_dim


# --------------------------------------------------------------------------------------
# The production path: torch.distributed.tensor.parallel


def interleave_parts(linear: nn.Linear, parts: list[int], world: int) -> nn.Linear:
    """A copy of ``linear`` with its output rows reordered so that a contiguous split
    into ``world`` pieces (what ``ColwiseParallel`` does) gives rank r
    ``[part1_r|part2_r|...]``: the fused-weight fix for the library path."""
    out = nn.Linear(
        linear.in_features, linear.out_features, bias=linear.bias is not None
    )
    with torch.no_grad():
        out.weight.copy_(
            torch.cat(
                [shard_parts(linear.weight, parts, 0, r, world) for r in range(world)]
            )
        )
        if linear.bias is not None:
            out.bias.copy_(
                torch.cat(
                    [shard_parts(linear.bias, parts, 0, r, world) for r in range(world)]
                )
            )
    return out


def parallelize_mlp(mlp: MLP | GatedMLP, mesh: DeviceMesh) -> TensorParallelMLP:
    """``mlp`` split over the 1-D ``mesh`` with ``parallelize_module``: ``fc``
    column-wise, ``proj`` row-wise (a gated ``fc`` interleaved first, so each rank gets
    gate and up).
    """
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    gated, activation = _mlp_kind(mlp)
    d_ff = mlp.proj.in_features
    fc = interleave_parts(mlp.fc, [d_ff, d_ff], mesh.size()) if gated else _copy(mlp.fc)
    module = TensorParallelMLP(fc, _copy(mlp.proj), activation, gated)
    plan = {"fc": ColwiseParallel(), "proj": RowwiseParallel()}
    return parallelize_module(module, mesh, plan)


def parallelize_attention(
    attn: CausalSelfAttention, mesh: DeviceMesh
) -> TensorParallelAttention:
    """``attn`` split by heads over the 1-D ``mesh`` with ``parallelize_module``."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    H, H_kv, hd = _local_heads(attn, mesh.size())
    qkv = interleave_parts(attn.qkv, _qkv_parts(attn), mesh.size())
    module = TensorParallelAttention(qkv, _copy(attn.proj), H, H_kv, hd)
    plan = {"qkv": ColwiseParallel(), "proj": RowwiseParallel()}
    return parallelize_module(module, mesh, plan)


def _copy(linear: nn.Linear) -> nn.Linear:
    out = nn.Linear(
        linear.in_features, linear.out_features, bias=linear.bias is not None
    )
    out.load_state_dict(linear.state_dict())
    return out
