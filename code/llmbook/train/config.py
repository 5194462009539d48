"""The run configuration: everything that determines a training run. Chapter 5."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llmbook.artifacts import config_dict
from llmbook.model import GPTConfig
from llmbook.profiles import Profile, TrainSettings


@dataclass(frozen=True)
class TrainConfig:
    """The model, the optimisation settings, the seed and the identity of the training data.

    The device is not part of it: a run is the same run on ``cuda:0`` or ``cuda:3`` (each
    ``torchrun`` rank has its own), and a checkpoint written on one resumes on another.
    Checkpoints record :meth:`identity`, and resuming checks it.
    """

    model: GPTConfig
    settings: TrainSettings
    seed: int = 1337
    data: str = ""  # what the model trains on, e.g. the SHA-256 of the training token file

    def __post_init__(self) -> None:
        if not isinstance(self.model, GPTConfig):
            raise TypeError(f"model must be a GPTConfig, got {type(self.model).__name__}")
        if not isinstance(self.settings, TrainSettings):
            raise TypeError(f"settings must be a llmbook.profiles.TrainSettings, "
                            f"got {type(self.settings).__name__}")

    @classmethod
    def for_profile(cls, profile: Profile, *, vocab_size: int, data: str = "",
                    **settings: Any) -> TrainConfig:
        """The run a profile describes: its model preset with the tokenizer's vocabulary and
        the training settings' dropout; ``settings`` override fields of
        ``profile.train``."""
        if not isinstance(profile, Profile):
            raise TypeError("profile must be a llmbook.profiles.Profile, resolved once "
                            "where the chapter or program starts (llmbook.profiles.start), "
                            f"got {type(profile).__name__}")
        train = dataclasses.replace(profile.train, **settings)
        model = GPTConfig.preset(profile.model.preset, vocab_size=vocab_size,
                                 dropout=train.dropout)
        return cls(model, train, seed=profile.seed, data=data)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The inverse of :func:`llmbook.artifacts.config_dict`: a config read back from
        JSON."""
        return cls(GPTConfig(**d["model"]), TrainSettings(**d["settings"]), seed=d["seed"],
                   data=d["data"])

    @property
    def tokens_per_step(self) -> int:
        """Tokens one process reads per optimizer step (all its micro-batches)."""
        return self.settings.batch_size * self.settings.grad_accum * self.model.block_size

    def identity(self, world_size: int = 1) -> dict:
        """What makes two runs the same run: this config and the global batch, in tokens per
        optimizer step over all ``world_size`` processes. How that batch is cut (processes,
        micro-batch size, accumulation steps) is left out: every cut reads the same windows
        at each step (:class:`~llmbook.batches.WindowBatchSampler`), so a checkpoint written
        on 2 processes resumes on 1 or 4."""
        if world_size < 1:
            raise ValueError(f"world_size must be positive, got {world_size}")
        identity = config_dict(self)
        identity["settings"] = {k: v for k, v in identity["settings"].items()
                                if k not in ("batch_size", "grad_accum")}
        return identity | {"global_batch_tokens": self.tokens_per_step * world_size}
