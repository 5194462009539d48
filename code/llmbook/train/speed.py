"""How fast a training step runs: eager against ``torch.compile``, and the model FLOPs
utilisation it reaches. Chapter 6.

A step is the Trainer's own (autocast, backward, clipping, AdamW), on random tokens: speed
does not depend on what the tokens say. The first step is timed on its own, because under
``torch.compile`` it is the one that traces the model and generates the kernels; the steady
step is the mean of the steps after a few more of warm-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from llmbook.artifacts import cached_artifact
from llmbook.measure import mfu, timed
from llmbook.train.config import TrainConfig
from llmbook.train.loop import Trainer


class RandomTokens:
    """Batches of uniformly random token ids, ``(batch_size, block_size)`` inputs and
    targets, from a seeded generator: a batch source for speed measurements."""

    def __init__(self, vocab_size: int, block_size: int, batch_size: int, seed: int = 0):
        if min(vocab_size, block_size, batch_size) < 1:
            raise ValueError(f"vocab_size, block_size and batch_size must be positive, got "
                             f"{vocab_size}, {block_size}, {batch_size}")
        self.shape = (batch_size, block_size)
        self.vocab_size = vocab_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        ids = torch.randint(0, self.vocab_size, (self.shape[0], self.shape[1] + 1),
                            generator=self.generator)
        return ids[:, :-1], ids[:, 1:]


@contextlib.contextmanager
def _cold_compiler(enabled: bool) -> Iterator[None]:
    """No compiled code from earlier runs: dynamo forgets its frames and inductor neither
    reads nor writes its on-disk caches, so the first step pays for a whole compilation."""
    if not enabled:
        yield
        return
    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True), warnings.catch_warnings():
        # that setting also turns off profile-guided recompilation, and says so once
        warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
        yield
    torch._dynamo.reset()


def time_steps(runs: Sequence[TrainConfig], *, device: str | torch.device,
                    steps: int, warmup: int = 2) -> list[dict]:
    """Train each of ``runs`` (its model, batch, dtype and ``compile`` setting) on random
    tokens and time its optimizer steps, uncached.

    Each run's first step is timed as it starts (under ``compile``, the compilation, with
    no cache to read from), then it takes ``warmup`` more. Then ``steps`` rounds follow in
    which every run takes one timed step, so that a slow spell of the machine slows all of
    them rather than one. Returns, per run, ``first_s``, ``step_s`` (its fastest step:
    other work on the machine only ever adds time), ``tokens_per_s`` at that pace and
    ``mfu`` (None where :func:`llmbook.measure.peak_flops` does not know the device's
    peak).
    """
    if not runs or not all(isinstance(run, TrainConfig) for run in runs):
        raise TypeError("runs must be a non-empty sequence of TrainConfig")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, "
                         f"warmup={warmup}")
    total = 1 + warmup + steps
    trainers, first = [], []
    with _cold_compiler(any(run.settings.compile for run in runs)):
        for run in runs:
            s = dataclasses.replace(run.settings, steps=total, warmup_steps=1,
                                    grad_accum=1, log_interval=total, eval_interval=total,
                                    keep_best=False)
            run = dataclasses.replace(run, settings=s)
            batches = RandomTokens(run.model.vocab_size, run.model.block_size,
                                   s.batch_size, seed=run.seed)
            trainer = Trainer(run, batches, device=device)
            first.append(timed(lambda: trainer.fit(until=1), trainer.device)[1])
            trainer.fit(until=1 + warmup)
            trainers.append(trainer)
        times = [[] for _ in trainers]
        for _ in range(steps):
            for trainer, seconds in zip(trainers, times):
                seconds.append(timed(lambda: trainer.fit(until=trainer.step + 1),
                                     trainer.device)[1])
    results = []
    for trainer, first_s, seconds in zip(trainers, first, times):
        step_s = min(seconds)
        tokens_per_s = trainer.config.tokens_per_step / step_s
        utilisation = None
        if trainer.peak_flops is not None:
            utilisation = mfu(tokens_per_s, trainer.flops_per_token, trainer.peak_flops)
        results.append({"compile": trainer.settings.compile,
                        "dtype": trainer.settings.dtype, "first_s": first_s,
                        "step_s": step_s, "tokens_per_s": tokens_per_s,
                        "mfu": utilisation})
    return results


VARIANTS = (("float32", False), ("bfloat16", False), ("float32", True),
            ("bfloat16", True))  # (dtype, compile): every combination


@dataclass(frozen=True)
class SpeedSpec:
    """The key of a set of speed measurements: the runs, the device type and the CPU
    threads, and the step counts."""

    runs: tuple[TrainConfig, ...]
    device: str
    threads: int
    steps: int
    warmup: int


def cached_time_steps(runs: Sequence[TrainConfig], *, device: str | torch.device,
                      steps: int, warmup: int = 2) -> list[dict]:
    """:func:`time_steps` of ``runs``, cached: keyed by the runs, the device type and
    PyTorch's CPU threads (the figures are this machine's: a fresh cache measures again)."""
    if not runs or not all(isinstance(run, TrainConfig) for run in runs):
        raise TypeError("runs must be a non-empty sequence of TrainConfig")
    device = torch.device(device)
    spec = SpeedSpec(tuple(runs), device.type, torch.get_num_threads(), steps, warmup)

    def build(out: Path) -> None:
        result = time_steps(runs, device=device, steps=steps, warmup=warmup)
        (out / "speed.json").write_text(json.dumps(result, indent=1), encoding="utf-8")

    path = cached_artifact("step-speed", spec, build)
    return json.loads((path / "speed.json").read_text(encoding="utf-8"))


def step_speeds(run: TrainConfig, *, device: str | torch.device, steps: int,
                warmup: int = 2,
                variants: tuple[tuple[str, bool], ...] = VARIANTS) -> list[dict]:
    """:func:`cached_time_steps` of ``run`` in each ``(dtype, compile)`` variant, in
    order."""
    variants = tuple((str(dtype), bool(compiled)) for dtype, compiled in variants)
    unknown = [dtype for dtype, _ in variants if dtype not in ("float32", "bfloat16")]
    if not variants or unknown:
        raise ValueError(f"variants must be (dtype, compile) pairs with dtype 'float32' or "
                         f"'bfloat16', got {variants}")
    runs = [dataclasses.replace(run, settings=dataclasses.replace(
        run.settings, dtype=dtype, compile=compiled)) for dtype, compiled in variants]
    return cached_time_steps(runs, device=device, steps=steps, warmup=warmup)
