"""The device side of a run: placement, autocast, deterministic kernels and random state."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import Tensor


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (a tensor, or a tuple, list or dict of them) on ``device``. To a GPU the
    copy goes through pinned memory, so that it overlaps the GPU's work."""
    if isinstance(batch, Tensor):
        if device.type == "cuda":
            return batch.pin_memory().to(device, non_blocking=True)
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def autocast(device_type: str,
             dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` (matrix multiplies in bfloat16, sensitive reductions
    in float32), or nothing when ``dtype`` is None. Weights and optimizer state stay
    float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Within the block, PyTorch uses only deterministic kernels (and raises where none
    exists); the previous setting returns afterwards. On a CPU this costs nothing and guards
    bit-for-bit repeatability."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def capture_rng(device: torch.device) -> dict[str, Tensor | None]:
    """The state of PyTorch's default generators: the CPU's, and the GPU's if on one."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def restore_rng(state: dict[str, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
