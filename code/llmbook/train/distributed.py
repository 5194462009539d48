"""Training on several processes: join the process group that ``torchrun`` describes, wrap
the model for data parallelism, and read and write whole-model state from sharded models.
Chapter 6.

``torchrun`` starts one process per device and tells each, through environment variables,
who it is (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``) and where to meet the others
(``MASTER_ADDR``, ``MASTER_PORT``). On several machines its rendezvous arguments
(``--nnodes``, ``--rdzv-backend=c10d``, ``--rdzv-endpoint=HOST:PORT``) let the agents find
each other first; the processes see the same variables either way.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

PARALLEL = ("ddp", "torch-ddp", "fsdp")  # ours, torch's DistributedDataParallel, FSDP2
_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a run: its rank, the number of processes, its rank on
    its machine, its device and the process group's backend (``None``: one process, no
    group)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None


def launch_from_env(device_type: str, env: Mapping[str, str] | None = None, *,
                    timeout_s: float = 300.0) -> Launch:
    """Read ``torchrun``'s environment and, with more than one process, join the process
    group: gloo on the CPU, NCCL on CUDA (one GPU per process, ``LOCAL_RANK`` picks it).
    A missing or inconsistent variable is a one-line ``ValueError``."""
    env = os.environ if env is None else env
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    world = _int_var(env, "WORLD_SIZE", "1")
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be a positive number of processes, got {world}")
    if world == 1:
        device = torch.device("cuda" if device_type == "cuda" else "cpu")
        return Launch(0, 1, 0, device, None)
    missing = [name for name in _TORCHRUN_VARS if name not in env]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: no "
                         "rendezvous; start the processes with torchrun")
    rank, local_rank = _int_var(env, "RANK", "0"), _int_var(env, "LOCAL_RANK", "0")
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this machine has "
                             f"{torch.cuda.device_count()} GPU(s): start at most that "
                             "many processes per node (--nproc_per_node)")
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():  # env:// reads MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Launch(rank, world, local_rank, device, backend)


def _int_var(env: Mapping[str, str], name: str, default: str) -> int:
    text = env.get(name, default)
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None


def data_parallel_wrap(parallel: str, launch: Launch) -> Callable[[nn.Module], nn.Module]:
    """The Trainer's ``wrap``: our :class:`~llmbook.parallel.ddp.DataParallel`, torch's
    ``DistributedDataParallel``, or FSDP2 (:func:`~llmbook.parallel.ddp.apply_fsdp`, which
    shards the model in place: the optimizer, built afterwards, then holds shards)."""
    if parallel not in PARALLEL:
        raise ValueError(f"unknown parallelism {parallel!r}; choose one of {PARALLEL}")

    def wrap(module: nn.Module) -> nn.Module:
        if isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
            raise ValueError(f"--parallel {parallel} with compile=true is not supported "
                             "here; pass --set compile=false")
        if parallel == "ddp":
            from llmbook.parallel.ddp import DataParallel

            return DataParallel(module)
        if parallel == "torch-ddp":
            ids = [launch.device.index] if launch.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(module, device_ids=ids)
        from llmbook.parallel.ddp import apply_fsdp

        return apply_fsdp(module)

    return wrap


# -- whole-model state from sharded models ----------------------------------------------
# FSDP leaves each rank a shard of every parameter (a DTensor). Checkpoints here are
# *gathered*: the whole model and optimizer state, as one process would hold them, so
# that a checkpoint written under FSDP resumes under any number of processes and loads
# into a plain model. Every rank must call these together (they all-gather); the cost is
# one full copy per rank while saving, which the book's models afford. Sharded
# checkpoints (torch.distributed.checkpoint, one file per rank) are what models too large
# for one device's memory need.

def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True)


def model_state(model: nn.Module) -> dict:
    """``model.state_dict()``, gathered into whole tensors when the model is sharded."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def load_model_state(model: nn.Module, state: dict) -> None:
    """Load whole tensors into ``model``, each rank keeping its shard if sharded."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_full_options())


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state as whole tensors keyed by parameter names, sharded model or
    not: ``optimizer.state_dict()`` keys them by position instead, a layout a sharded
    optimizer does not share, so one format serves both."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_full_options())
