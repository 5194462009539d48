"""The book's named configurations: ``cpu`` (minutes on a laptop) and ``gpu`` (full size on one GPU).

Every chapter takes a ``profile`` parameter and looks it up here; this module is the single place where the two
editions differ. Each chapter's settings are a small frozen dataclass, validated on construction, and a
:class:`Profile` bundles one of each.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DataSettings:
    """Chapter 1: how the data-loading demo cuts the token stream into training examples."""

    block_size: int  # tokens of context per example
    batch_size: int

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.batch_size < 1:
            raise ValueError(f"block_size and batch_size must be positive, got {self.block_size}, {self.batch_size}")


@dataclass(frozen=True)
class AttentionSettings:
    """Chapter 3: the attention-only model whose attention maps the chapter draws, and the cost sweep."""

    lm_block_size: int  # context of the attention-only model (bytes)
    lm_d_model: int
    lm_n_heads: int
    lm_batch_size: int
    lm_steps: int
    lm_lr: float
    cost_seq_lens: tuple[int, ...]  # sequence lengths of the time and memory sweep, ascending
    cost_dtype: str  # "float32" or "bfloat16"
    cost_repeats: int  # timed runs per point (the median is reported)

    def __post_init__(self) -> None:
        sizes = (self.lm_block_size, self.lm_d_model, self.lm_n_heads, self.lm_batch_size, self.lm_steps,
                 self.cost_repeats)
        if min(sizes) < 1:
            raise ValueError(f"attention settings must be positive, got {self}")
        if self.lm_d_model % self.lm_n_heads:
            raise ValueError(f"lm_d_model={self.lm_d_model} must be divisible by lm_n_heads={self.lm_n_heads}")
        if not self.lm_lr > 0:
            raise ValueError(f"lm_lr must be positive, got {self.lm_lr}")
        lens = self.cost_seq_lens
        if len(lens) < 2 or min(lens) < 1 or list(lens) != sorted(set(lens)):
            raise ValueError(f"cost_seq_lens must be at least two increasing positive lengths, got {lens}")
        if self.cost_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"cost_dtype must be 'float32' or 'bfloat16', got {self.cost_dtype!r}")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device: str  # "cpu" or "cuda"
    data: DataSettings
    attention: AttentionSettings
    seed: int = 1337

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")


PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu",
        description="runs on a laptop CPU (2 cores) in minutes; what CI executes",
        device="cpu",
        data=DataSettings(block_size=64, batch_size=8),
        attention=AttentionSettings(lm_block_size=64, lm_d_model=64, lm_n_heads=4, lm_batch_size=32,
                                    lm_steps=400, lm_lr=1e-2, cost_seq_lens=(256, 512, 1024, 2048),
                                    cost_dtype="float32", cost_repeats=3),
    ),
    "gpu": Profile(
        name="gpu",
        description="full size, on one CUDA GPU (H100 class)",
        device="cuda",
        data=DataSettings(block_size=256, batch_size=64),
        attention=AttentionSettings(lm_block_size=128, lm_d_model=128, lm_n_heads=4, lm_batch_size=64,
                                    lm_steps=3000, lm_lr=3e-3,
                                    cost_seq_lens=(512, 1024, 2048, 4096, 8192, 16384),
                                    cost_dtype="bfloat16", cost_repeats=10),
    ),
}


def get_profile(name: str, *, check_device: bool = True) -> Profile:
    """The profile called ``name``; an unknown name, or ``gpu`` without a GPU, is a clear error."""
    if name not in PROFILES:
        valid = ", ".join(repr(p) for p in PROFILES)
        raise ValueError(f"unknown profile {name!r}; valid profiles are {valid}")
    profile = PROFILES[name]
    if check_device and profile.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"profile {name!r} needs a CUDA GPU, but torch.cuda.is_available() is False on this machine; "
            "run with profile='cpu' instead"
        )
    return profile


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so that a run repeats exactly on one machine."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def start(name: str) -> Profile:
    """What a chapter's first code cell calls: validate the profile, seed everything, return the profile."""
    profile = get_profile(name)
    seed_everything(profile.seed)
    return profile
