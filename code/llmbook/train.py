"""Pretraining: the objective, the training loop, evaluation, checkpoints and the book's model.
Chapter 5.

The pieces, in the order the chapter builds them:

1. **The objective**: next-token cross-entropy (:func:`cross_entropy`) in nats per token, and
   bits per character (:func:`bits_per_char`), which compares models whatever their tokenizer.
2. **Batches**: random windows of a token file in a seeded, resumable order
   (:class:`BatchStream`); held-out text scored window by window, every token once
   (:func:`evaluate`).
3. **The loop**: :class:`Trainer` runs AdamW with warm-up, cosine decay and global-norm
   clipping (:mod:`llmbook.optim`), gradient accumulation, bfloat16 autocast and
   ``torch.compile`` where the device has them, evaluation at intervals, a JSON-lines run log,
   throughput and model FLOPs utilisation.
4. **Checkpoints**: model, optimizer, step, data position and random state in one atomically
   written, checksummed file; resuming continues a run bit for bit on a CPU.
5. **The book's model**: :func:`pretrained_model` trains the profile's model once and caches
   it, keyed by everything that determines it, for the chapters that follow.
6. **Baselines**: character n-gram models (:func:`char_ngram_bits_per_char`), the yardstick.

Outside a notebook: ``python -m llmbook.train --profile cpu`` (``--help`` lists the options).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import pickle
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from llmbook import data
from llmbook.artifacts import (atomic_write_bytes, atomic_write_text, cached_artifact,
                               config_dict)
from llmbook.attention import synchronize
from llmbook.model import GPT, GPTConfig, flops_per_token
from llmbook.optim import WarmupCosine, clip_grad_norm, make_optimizer, set_learning_rate
from llmbook.profiles import Profile, TrainSettings, get_profile

LN2 = math.log(2.0)

# Dense (not 2:4 sparse) peak FLOP/s by GPU name and compute dtype, from the vendors' data
# sheets, for model FLOPs utilisation. An H200 has the H100's compute with more, faster memory.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100": {"bfloat16": 989e12, "float32": 494e12},  # SXM; float32 runs as TF32
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
}


# ---------------------------------------------------------------------------------------------
# 1. The objective
# ---------------------------------------------------------------------------------------------


def cross_entropy(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """The mean negative log-likelihood of ``targets`` under ``softmax(logits)``, in nats per
    token.

    For logits ``z`` over the vocabulary and the true next token ``y`` the loss is
    ``-log softmax(z)_y = logsumexp(z) - z_y``: the log of the normaliser minus the true
    token's logit. ``logsumexp`` subtracts the largest logit before exponentiating, so nothing
    overflows. Positions whose target is ``ignore_index`` are left out of the mean, as in
    ``torch.nn.functional.cross_entropy``.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must have the shape of targets "
                         f"{tuple(targets.shape)} plus a vocabulary dimension")
    z = logits.float().reshape(-1, logits.shape[-1])  # (N, V)
    y = targets.reshape(-1)  # (N,)
    keep = y != ignore_index
    log_normaliser = torch.logsumexp(z, dim=-1)  # (N,)
    true_logit = z.gather(1, y.clamp(min=0)[:, None]).squeeze(1)  # (N,); ignored rows: id 0
    return (log_normaliser - true_logit)[keep].mean()


def bits_per_char(total_nats: float, n_chars: int) -> float:
    """Bits per character: the loss of a whole text in bits (divide by ln 2), spread over its
    characters. A byte-level and a BPE model of the same text pay for the same characters, so
    their bits per character compare even though their tokens do not."""
    if n_chars < 1:
        raise ValueError(f"n_chars must be positive, got {n_chars}")
    return total_nats / LN2 / n_chars


# ---------------------------------------------------------------------------------------------
# 2. Batches and evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class TokenSplit:
    """A token file and the number of characters of the text it encodes (for bits per char)."""

    tokens: data.TokenFile
    n_chars: int
    name: str = "split"

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, data.TokenFile):
            raise TypeError(f"tokens must be a llmbook.data.TokenFile, "
                            f"got {type(self.tokens).__name__}")
        if self.n_chars < 1:
            raise ValueError(f"n_chars must be positive, got {self.n_chars}")

    @property
    def tokens_per_char(self) -> float:
        """Scored tokens per character of text (every token but the first is a target once)."""
        return max(1, len(self.tokens) - 1) / self.n_chars


def gather_windows(ids: np.ndarray, starts: np.ndarray,
                   block_size: int) -> tuple[Tensor, Tensor]:
    """Inputs and targets of the windows starting at ``starts``, ``x = ids[s : s + T]`` and
    ``y = ids[s + 1 : s + T + 1]``, read from the memory-mapped file in one indexing step."""
    rows = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(block_size + 1)  # (B, T+1)
    chunk = torch.from_numpy(ids[rows].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]  # (B, T), (B, T)


class BatchStream:
    """Endless training batches: windows at every offset of a token file, in a seeded order.

    A window is ``block_size + 1`` consecutive tokens and any offset can start one, so over the
    epochs the model sees each passage at every alignment. The order comes from
    :class:`llmbook.data.WindowBatchSampler`, a pure function of (seed, position), so
    :meth:`state_dict` is all a checkpoint needs to continue the stream exactly. Batches are
    built on demand, never prefetched: the saved position is that of the next batch.
    """

    def __init__(self, tokens: data.TokenFile, block_size: int, batch_size: int, *, seed: int,
                 rank: int = 0, world_size: int = 1,
                 device: str | torch.device = "cpu") -> None:
        self.ids = tokens.ids
        self.block_size = block_size
        self.windows = data.TokenWindows(tokens, block_size, stride=1)
        self.sampler = data.WindowBatchSampler(len(self.windows), batch_size, seed=seed,
                                               rank=rank, world_size=world_size)
        self.device = torch.device(device)
        self._batches: Iterator[list[int]] | None = None

    def next_batch(self) -> tuple[Tensor, Tensor]:
        if self._batches is None:
            self._batches = iter(self.sampler)
        x, y = gather_windows(self.ids, np.array(next(self._batches)), self.block_size)
        if self.device.type == "cuda":  # from pinned memory the copy overlaps the GPU's work
            x, y = x.pin_memory(), y.pin_memory()
            return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return x, y

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._batches = None  # iteration restarts at the restored position


def eval_windows(n_tokens: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Window starts and, per window, the number of leading targets to skip, such that the
    windows score every token after the first exactly once.

    Windows lie end to end (``0, T, 2T, ...``); the last one is pulled back to end where the
    stream ends, and it skips the targets its neighbour already scored.
    """
    if n_tokens < block_size + 1:
        raise ValueError(f"{n_tokens} tokens are too few for one window of {block_size} + 1")
    n_windows = math.ceil((n_tokens - 1) / block_size)
    nominal = np.arange(n_windows, dtype=np.int64) * block_size
    starts = np.minimum(nominal, n_tokens - 1 - block_size)
    return starts, nominal - starts  # the skip is positive only for the last window


@dataclass(frozen=True)
class EvalResult:
    """The loss of a model on (part of) a split, in nats per token and bits per character."""

    split: str
    tokens: int  # targets scored
    nats_per_token: float
    bits_per_char: float
    complete: bool  # True when every token of the split was scored


@torch.no_grad()
def evaluate(model: GPT, split: TokenSplit, *, batch_size: int, max_tokens: int | None = None,
             autocast_dtype: torch.dtype | None = None) -> EvalResult:
    """Score ``split`` with ``model`` in eval mode (no dropout), window by window.

    With ``max_tokens``, only that many tokens' worth of windows, spread evenly over the split,
    are scored: a quick estimate during training, whose bits per character scale the mean loss
    by the split's tokens per character. Without, every token after the first is scored once
    and the result is exact.
    """
    T = model.config.block_size
    device = next(model.parameters()).device
    starts, skips = eval_windows(len(split.tokens), T)
    complete = max_tokens is None or max_tokens >= len(starts) * T
    if not complete:
        picks = np.linspace(0, len(starts) - 1, num=max(1, max_tokens // T))
        keep = np.unique(picks.round().astype(np.int64))
        starts, skips = starts[keep], skips[keep]
    was_training = model.training
    model.eval()
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for i in range(0, len(starts), batch_size):
            x, y = gather_windows(split.tokens.ids, starts[i : i + batch_size], T)
            skip = torch.from_numpy(skips[i : i + batch_size])[:, None]
            y = y.masked_fill(torch.arange(T)[None, :] < skip, -100)  # scored by the neighbour
            n = int((y != -100).sum())
            with autocast(device.type, autocast_dtype):
                _, loss = model(x.to(device), y.to(device))
            total_nats += loss.double() * n
            count += n
    finally:
        model.train(was_training)
    nats = total_nats.item() / count
    return EvalResult(split.name, count, nats, nats * split.tokens_per_char / LN2, complete)


def autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` (matrix multiplies in bfloat16, sensitive reductions in
    float32), or nothing when ``dtype`` is None. Weights and optimizer state stay float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# 3. The run configuration and the loop
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run: the model, the optimisation settings, the
    seed, the device and the identity of the training data. Checkpoints record it, and resuming
    checks it."""

    model: GPTConfig
    settings: TrainSettings
    seed: int = 1337
    device: str = "cpu"
    data: str = ""  # what the model trains on, e.g. the SHA-256 of the training token file

    def __post_init__(self) -> None:
        if not isinstance(self.model, GPTConfig):
            raise TypeError(f"model must be a GPTConfig, got {type(self.model).__name__}")
        if not isinstance(self.settings, TrainSettings):
            raise TypeError(f"settings must be a llmbook.profiles.TrainSettings, "
                            f"got {type(self.settings).__name__}")
        try:
            kind = torch.device(self.device).type
        except RuntimeError:
            kind = None
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")

    @classmethod
    def for_profile(cls, profile: Profile | str, *, vocab_size: int, data: str = "",
                    **settings: Any) -> TrainConfig:
        """The run a profile describes: its model preset with the tokenizer's vocabulary and
        the training settings' dropout; ``settings`` override fields of ``profile.train``."""
        if isinstance(profile, str):
            profile = get_profile(profile, check_device=False)
        train = dataclasses.replace(profile.train, **settings)
        model = GPTConfig.preset(profile.model.preset, vocab_size=vocab_size,
                                 dropout=train.dropout)
        return cls(model, train, seed=profile.seed, device=profile.device, data=data)

    @property
    def tokens_per_step(self) -> int:
        return self.settings.batch_size * self.settings.grad_accum * self.model.block_size


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """The device's dense peak FLOP/s for ``dtype`` when we know it (:data:`PEAK_FLOPS`)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS.items():
        if key in name:
            return peaks[dtype]
    return None


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: corrupt, truncated, foreign, or from a different run."""


CHECKPOINT_FORMAT = "llmbook-checkpoint"
CHECKPOINT_VERSION = 1


class Trainer:
    """The training loop of a :class:`~llmbook.model.GPT`. Chapter 5 walks through it.

    One optimizer step sets the learning rate from the schedule; runs ``grad_accum``
    micro-batches forward (under autocast) and backward, accumulating their gradients; clips
    the gradients' global norm; steps AdamW. Every ``log_interval`` steps a record of the
    training loss, learning rate, gradient norm and throughput joins the run log; every
    ``eval_interval`` steps the model is scored on samples of training and held-out text.

    ``rank`` and ``world_size`` give each process of a multi-process run (``torchrun``) its
    share of the batches, and only rank 0 writes logs and checkpoints. Averaging gradients
    across processes comes with data parallelism in a later chapter; until then a run is one
    process.
    """

    def __init__(self, config: TrainConfig, train: TokenSplit, val: TokenSplit, *,
                 rank: int = 0, world_size: int = 1, log_path: Path | str | None = None,
                 progress: bool = False, compile_options: dict | None = None) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        for split in (train, val):
            if split.tokens.vocab_size > config.model.vocab_size:
                raise ValueError(f"the {split.name} tokens use a vocabulary of "
                                 f"{split.tokens.vocab_size} but the model has "
                                 f"{config.model.vocab_size}; size the model to the tokenizer")
        self.config, self.settings = config, config.settings
        self.train_split, self.val_split = train, val
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(config.device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("this run is configured for CUDA but no GPU is available; "
                                   "use the cpu profile")
            torch.backends.cuda.matmul.allow_tf32 = True  # for matmuls left outside autocast
            torch.backends.cudnn.allow_tf32 = True

        # The run owns its random stream (initial weights, dropout): seeded here, swapped in
        # while it trains and saved in checkpoints, so that it neither depends on nor disturbs
        # other users of PyTorch's global generator. The data order has its own generator.
        outer = capture_rng(self.device)
        torch.manual_seed(config.seed)
        self.model = GPT(config.model).to(self.device)
        self._rng, self._rng_active = capture_rng(self.device), False
        restore_rng(outer, self.device)
        s = self.settings
        self.forward = self.model  # what training calls; evaluation uses the plain model
        if s.compile:
            self.forward = torch.compile(self.model, **(compile_options or {}))
        self.optimizer = make_optimizer(self.model, lr=s.lr, weight_decay=s.weight_decay,
                                        betas=(s.beta1, s.beta2), implementation=s.optimizer)
        self.schedule = WarmupCosine(s.lr, s.min_lr, s.warmup_steps, s.steps)
        self.batches = BatchStream(train.tokens, config.model.block_size, s.batch_size,
                                   seed=config.seed, rank=rank, world_size=world_size,
                                   device=self.device)
        self.autocast_dtype = torch.bfloat16 if s.dtype == "bfloat16" else None
        self.flops_per_token = flops_per_token(config.model)
        self.peak_flops = peak_flops(self.device, s.dtype)

        self.step = 0  # optimizer steps taken
        self.log: list[dict] = []
        self.best: dict | None = None  # {"step", "val_loss", "model"} with settings.keep_best
        self._pending = {"loss_sum": 0.0, "steps": 0}  # training losses since the last record
        self.timings = {"train": 0.0, "eval": 0.0, "checkpoint": 0.0, "log": 0.0}  # seconds
        self.log_path = Path(log_path) if log_path is not None and rank == 0 else None
        self.progress = progress and rank == 0

    # -- one step -----------------------------------------------------------------------------

    def train_step(self) -> tuple[Tensor, Tensor]:
        """One optimizer step. Returns the mean training loss of its micro-batches and the
        gradient norm before clipping, as tensors on the device: reading them makes the CPU
        wait for the GPU, so the loop reads them only when it logs."""
        s = self.settings
        set_learning_rate(self.optimizer, self.schedule(self.step))
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(s.grad_accum):
            x, y = self.batches.next_batch()
            with autocast(self.device.type, self.autocast_dtype):
                _, loss = self.forward(x, y)
            (loss / s.grad_accum).backward()  # gradients add up: the mean over micro-batches
            loss_sum += loss.detach()
        # grad_clip 0 means no clipping: an infinite threshold still measures the norm, for the log
        grad_norm = clip_grad_norm(self.model.parameters(), s.grad_clip or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss_sum / s.grad_accum, grad_norm

    def evaluate(self, split: TokenSplit, max_tokens: int | None = None) -> EvalResult:
        """Score ``split`` (or ``max_tokens`` of it) in batches of the training micro-batch
        (which fits in memory, and needs less without gradients), or of 8192 tokens if more."""
        batch_size = max(self.settings.batch_size, 8192 // self.config.model.block_size)
        return evaluate(self.model, split, batch_size=batch_size, max_tokens=max_tokens,
                        autocast_dtype=self.autocast_dtype)

    # -- the loop -----------------------------------------------------------------------------

    def fit(self, until: int | None = None, *, checkpoint_path: Path | str | None = None,
            checkpoint_interval: int | None = None) -> list[dict]:
        """Train up to step ``until`` (default: the last step) and return the run log.

        With ``checkpoint_path`` a checkpoint is written every ``checkpoint_interval`` steps
        and at ``until``. A fresh trainer that calls :meth:`resume` on it continues exactly
        where this one stopped.
        """
        s = self.settings
        until = s.steps if until is None else until
        if not self.step <= until <= s.steps:
            raise ValueError(f"until must be in [{self.step}, {s.steps}] (from the current "
                             f"step to the last), got {until}")
        bar = tqdm(total=s.steps, initial=self.step, disable=not self.progress, unit="step",
                   desc="training", leave=False, dynamic_ncols=True)
        with deterministic_algorithms(self.device.type == "cpu"), self._own_rng():
            tick = time.perf_counter()
            interval_seconds, interval_steps = 0.0, 0  # for the throughput of the next record
            while self.step < until:
                loss, grad_norm = self.train_step()
                self._pending["loss_sum"] += loss  # a tensor: no waiting for the GPU
                self._pending["steps"] += 1
                last = self.step == s.steps
                log_now = self.step % s.log_interval == 0 or last
                if log_now:
                    synchronize(self.device)  # let the GPU finish, so that the clock is honest
                now = time.perf_counter()
                self.timings["train"] += now - tick
                interval_seconds += now - tick
                interval_steps += 1
                bar.update(1)
                if log_now:
                    record = self._train_record(grad_norm, interval_steps, interval_seconds)
                    interval_seconds, interval_steps = 0.0, 0
                    self._append(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                if self.step % s.eval_interval == 0 or last:
                    start = time.perf_counter()
                    record = self._eval_record()
                    self.timings["eval"] += time.perf_counter() - start
                    self._append(record)
                    bar.set_postfix(loss=f"{record['train_loss']:.3f}",
                                    val=f"{record['val_loss']:.3f}")
                if checkpoint_path is not None and (self.step == until or (
                        checkpoint_interval and self.step % checkpoint_interval == 0)):
                    start = time.perf_counter()
                    self.save_checkpoint(checkpoint_path)
                    self.timings["checkpoint"] += time.perf_counter() - start
                tick = time.perf_counter()
        bar.close()
        return self.log

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        outer = capture_rng(self.device)
        restore_rng(self._rng, self.device)
        self._rng_active = True
        try:
            yield
        finally:
            self._rng, self._rng_active = capture_rng(self.device), False
            restore_rng(outer, self.device)

    def _train_record(self, grad_norm: Tensor, timed_steps: int, seconds: float) -> dict:
        loss = float(self._pending["loss_sum"]) / self._pending["steps"]
        if not math.isfinite(loss):
            raise FloatingPointError(f"the training loss is {loss} at step {self.step}: the "
                                     "run diverged; lower the learning rate or check the data")
        self._pending = {"loss_sum": 0.0, "steps": 0}
        tokens = self.config.tokens_per_step * self.world_size
        tokens_per_s = timed_steps * tokens / max(seconds, 1e-9)
        mfu = None
        if self.peak_flops is not None:  # achieved model FLOP/s over the device's peak
            mfu = tokens_per_s / self.world_size * self.flops_per_token / self.peak_flops
        return {"kind": "train", "step": self.step, "tokens": self.step * tokens,
                "lr": self.optimizer.param_groups[0]["lr"], "loss": loss,
                "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_s, "mfu": mfu}

    def _eval_record(self) -> dict:
        n = self.settings.eval_tokens
        train, val = self.evaluate(self.train_split, n), self.evaluate(self.val_split, n)
        if self.settings.keep_best and (self.best is None
                                        or val.nats_per_token < self.best["val_loss"]):
            weights = {k: v.detach().to("cpu", copy=True)
                       for k, v in self.model.state_dict().items()}
            self.best = {"step": self.step, "val_loss": val.nats_per_token, "model": weights}
        return {"kind": "eval", "step": self.step,
                "tokens": self.step * self.config.tokens_per_step * self.world_size,
                "train_loss": train.nats_per_token, "train_bpc": train.bits_per_char,
                "val_loss": val.nats_per_token, "val_bpc": val.bits_per_char}

    def _append(self, record: dict) -> None:
        start = time.perf_counter()
        self.log.append(record)
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        self.timings["log"] += time.perf_counter() - start

    def use_best(self) -> None:
        """Load the weights ``keep_best`` kept: the lowest held-out loss at an evaluation."""
        if self.best is not None:
            self.model.load_state_dict(self.best["model"])

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue the run exactly, for :meth:`save_checkpoint`."""
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": config_dict(self.config),
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": dataclasses.asdict(self.schedule),
            "data": self.batches.state_dict(),
            "rng": capture_rng(self.device) if self._rng_active else self._rng,
            "log": copy.deepcopy(self.log),
            "pending": {"loss_sum": float(self._pending["loss_sum"]),
                        "steps": self._pending["steps"]},
            "best": self.best,
        }

    def save_checkpoint(self, path: Path | str) -> Path:
        """Write :meth:`state_dict` to ``path`` atomically: a crash while writing leaves the
        previous checkpoint in place."""
        path = Path(path)
        if self.rank == 0:
            atomic_write_bytes(path, encode_checkpoint(self.state_dict()))
        return path

    def resume(self, path: Path | str) -> None:
        """Continue from the checkpoint at ``path``, which must come from a run with this
        trainer's config."""
        state = load_checkpoint(path, map_location=self.device)
        ours, theirs = _flatten(config_dict(self.config)), _flatten(state["config"])
        if ours != theirs:
            diffs = ", ".join(f"{k}: {theirs.get(k)!r} in the checkpoint, {ours.get(k)!r} here"
                              for k in _diff_keys(theirs, ours))
            raise CheckpointError(f"{path} was written by a different run ({diffs}); resume "
                                  "with the same settings, or start a new run")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["data"])
        self.step = state["step"]
        self.log = state["log"]
        self._pending = dict(state["pending"])
        self.best = state["best"]
        self._rng = {k: None if v is None else v.cpu() for k, v in state["rng"].items()}
        if self._rng_active:
            restore_rng(self._rng, self.device)
        if self.log_path is not None:  # the log continues from the checkpoint's records
            atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in self.log))


def encode_checkpoint(state: dict) -> bytes:
    """A checkpoint file: one header line with the format, the version and the SHA-256 of the
    payload, then the payload, ``torch.save(state)``. The digest catches what the zip container
    does not: a flipped bit inside tensor data loads without complaint, as a wrong weight."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    return f"{CHECKPOINT_FORMAT} {CHECKPOINT_VERSION} sha256={digest}\n".encode() + payload


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :meth:`Trainer.save_checkpoint`, or raise
    :class:`CheckpointError` saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    header, _, payload = path.read_bytes().partition(b"\n")
    fields = header.decode("ascii", errors="replace").split(" ")
    if len(fields) != 3 or fields[0] != CHECKPOINT_FORMAT or fields[2][:7] != "sha256=":
        raise CheckpointError(f"{path} is not an llmbook training checkpoint "
                              f"(no {CHECKPOINT_FORMAT!r} header)")
    if fields[1] != str(CHECKPOINT_VERSION):
        raise CheckpointError(f"{path} has checkpoint version {fields[1]}; this code reads "
                              f"version {CHECKPOINT_VERSION}")
    if hashlib.sha256(payload).hexdigest() != fields[2].removeprefix("sha256="):
        raise CheckpointError(f"{path} is corrupt or truncated (its SHA-256 does not match "
                              "its header); delete it and resume from an earlier checkpoint, "
                              "or start again")
    try:  # weights_only: a checkpoint is data, never code to run
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc}); it was "
                              "not written by Trainer.save_checkpoint") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an llmbook training checkpoint")
    return state


def capture_rng(device: torch.device) -> dict[str, Tensor | None]:
    """The state of PyTorch's default generators: the CPU's, and the GPU's if on one."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def restore_rng(state: dict[str, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _diff_keys(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


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


# ---------------------------------------------------------------------------------------------
# 4. The book's data and pretrained model
# ---------------------------------------------------------------------------------------------


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256): Chapter 1's tokenizer, to compare with BPE."""

    name = "bytes"
    n_vocab = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def book_splits(profile: Profile | str,
                tokenizer: str = "book") -> tuple[Any, dict[str, TokenSplit]]:
    """The tokenizer and the train, val and test :class:`TokenSplit` of the book's corpus.

    ``tokenizer="book"`` is the profile's BPE tokenizer (Chapter 2; each play is followed by
    ``<|endoftext|>``), ``"bytes"`` the UTF-8 bytes of Chapter 1. Characters are counted on the
    plays' text either way, so bits per character compare.
    """
    if isinstance(profile, str):
        profile = get_profile(profile, check_device=False)
    splits = {}
    if tokenizer == "book":
        from llmbook.tokenizers import book_token_file, book_tokenizer  # Chapter 2

        tok = book_tokenizer(profile)
        for name in data.SPLITS:
            n_chars = sum(len(text) for text in data.split_plays(name).values())
            tokens = data.TokenFile(book_token_file(profile, name))
            splits[name] = TokenSplit(tokens, n_chars, name)
    elif tokenizer == "bytes":
        tok = ByteTokenizer()
        for name in data.SPLITS:
            text = data.load_split(name)
            splits[name] = TokenSplit(data.byte_token_file(name), len(text), name)
    else:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; choose 'book' (BPE, Chapter 2) "
                         "or 'bytes'")
    return tok, splits


@dataclass(frozen=True)
class PretrainSpec:
    """The key of a pretrained-model artifact: the run, the tokenizer and the exact data."""

    run: TrainConfig
    tokenizer: str
    val_data: str  # SHA-256 of the validation tokens (the training tokens' is run.data)


@dataclass
class Pretrained:
    """A pretrained model with what explains it: its tokenizer, run config, log and scores."""

    model: GPT
    tokenizer: Any
    config: TrainConfig
    log: list[dict]
    summary: dict
    path: Path


MODEL_FILE, LOG_FILE, SUMMARY_FILE = "model.pt", "log.jsonl", "summary.json"


def _build_pretrained(spec: PretrainSpec, splits: dict[str, TokenSplit], out: Path,
                      progress: bool) -> None:
    trainer = Trainer(spec.run, splits["train"], splits["val"], log_path=out / LOG_FILE,
                      progress=progress)
    trainer.fit()
    trainer.use_best()
    model = trainer.model
    scores = {name: trainer.evaluate(splits[name]) for name in ("val", "test")}
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
    atomic_write_bytes(out / MODEL_FILE, buffer.getvalue())
    tokens = trainer.step * spec.run.tokens_per_step
    summary = {
        "steps": trainer.step, "tokens": tokens,
        "epochs": tokens / len(splits["train"].tokens),
        "selected_step": trainer.best["step"] if trainer.best else trainer.step,
        "parameters": model.num_parameters(),
        "non_embedding_parameters": model.num_parameters(non_embedding=True),
        "seconds": trainer.timings,
    }
    for name, result in scores.items():
        summary |= {f"{name}_loss": result.nats_per_token, f"{name}_bpc": result.bits_per_char,
                    f"{name}_tokens": result.tokens, f"{name}_chars": splits[name].n_chars}
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")


def pretrained_model(profile: Profile | str, *, tokenizer: str = "book",
                     progress: bool = False, **settings: Any) -> Pretrained:
    """The book's pretrained model for ``profile``: trained on first use, then read from the
    cache.

    The cache key covers the model and training settings, the seed, the device, the token
    files' SHA-256 and the source of the code that trains the model, so that any change trains
    a new model and nothing goes stale. ``settings`` override fields of ``profile.train`` (a
    different key, a different model).
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    tok, splits = book_splits(profile, tokenizer)
    run = TrainConfig.for_profile(profile, vocab_size=tok.n_vocab,
                                  data=splits["train"].tokens.meta["sha256"], **settings)
    val_sha = splits["val"].tokens.meta["sha256"]
    spec = PretrainSpec(run, getattr(tok, "name", tokenizer), val_sha)
    return cached_pretrained(spec, splits, tok, progress=progress)


def cached_pretrained(spec: PretrainSpec, splits: dict[str, TokenSplit], tokenizer: Any, *,
                      progress: bool = False) -> Pretrained:
    """Train ``spec.run`` on ``splits`` (train, val, test) unless cached; load the result."""
    from llmbook import attention, layers, model, optim  # the code behind the trained weights

    modules = [sys.modules[__name__], optim, model, layers, attention]
    path = cached_artifact("pretrained", spec,
                           lambda out: _build_pretrained(spec, splits, out, progress), modules)
    return load_pretrained(path, tokenizer)


def load_pretrained(path: Path | str, tokenizer: Any = None) -> Pretrained:
    """Read a pretrained-model artifact directory: weights, config, log and summary."""
    path = Path(path)
    run = json.loads((path / "config.json").read_text())["config"]["run"]
    model_config = GPTConfig(**run["model"])
    config = TrainConfig(model_config, TrainSettings(**run["settings"]), seed=run["seed"],
                         device=run["device"], data=run["data"])
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        device = torch.device("cpu")  # a GPU-trained model still loads on a laptop
    model = GPT(model_config)
    model.load_state_dict(torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True))
    model.to(device).eval()
    lines = (path / LOG_FILE).read_text().splitlines()
    log = [json.loads(line) for line in lines if line.strip()]
    summary = json.loads((path / SUMMARY_FILE).read_text())
    return Pretrained(model, tokenizer, config, log, summary, path)


# ---------------------------------------------------------------------------------------------
# 5. Baselines: what the numbers mean
# ---------------------------------------------------------------------------------------------


def char_ngram_bits_per_char(train_text: str, eval_text: str, order: int,
                             alpha: float = 1.0) -> float:
    """Bits per character of ``eval_text`` under a character n-gram model of ``train_text``.

    ``order`` 1 is the unigram model (each character's frequency), 2 the bigram model (the next
    character given the previous one), and so on. Probabilities use add-``alpha`` smoothing
    over the alphabet ``A`` of both texts, ``p(c | h) = (count(h c) + alpha) / (count(h) +
    alpha |A|)``, so that an unseen character or context costs a finite amount. The first
    ``order - 1`` characters of ``eval_text`` are scored with the shorter histories they have.
    """
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if not train_text or not eval_text:
        raise ValueError("train_text and eval_text must be non-empty")
    # Characters as integers 0..|A|-1, vectorised: UTF-32 gives one code point per character.
    points = np.frombuffer((train_text + eval_text).encode("utf-32-le"), dtype=np.uint32)
    alphabet, symbols = np.unique(points, return_inverse=True)
    A = len(alphabet)
    train, evals = symbols[: len(train_text)], symbols[len(train_text) :]
    # Each n-gram of the training text as one integer; sorted once, looked up by binary search.
    codes = _ngram_codes(train, order, A)
    ngrams, ngram_counts = np.unique(codes, return_counts=True)
    contexts, context_counts = np.unique(codes // A, return_counts=True)
    queries = _ngram_codes(evals, order, A)  # the n-grams ending at positions order-1, order, ...
    p = ((_lookup(ngrams, ngram_counts, queries) + alpha)
         / (_lookup(contexts, context_counts, queries // A) + alpha * A))
    total_bits = -float(np.log2(p).sum())
    for i in range(min(order - 1, len(evals))):  # the first characters have shorter histories
        n = i + 1
        gram = _ngram_codes(evals[:n], n, A)[0]
        history = _ngram_codes(train, n, A)
        count = np.count_nonzero(history == gram)
        context = np.count_nonzero(history // A == gram // A) if n > 1 else len(history)
        total_bits -= math.log2((count + alpha) / (context + alpha * A))
    return total_bits / len(evals)


def _ngram_codes(seq: np.ndarray, n: int, base: int) -> np.ndarray:
    if base**n >= 2**62:
        raise ValueError(f"order {n} over {base} symbols overflows 64-bit codes; "
                         "use a lower order")
    codes = np.zeros(max(0, len(seq) - n + 1), dtype=np.int64)
    for k in range(n):
        codes = codes * base + seq[k : len(seq) - n + 1 + k]
    return codes


def _lookup(keys: np.ndarray, counts: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The count of each query among the sorted ``keys`` (0 where absent)."""
    at = np.clip(np.searchsorted(keys, queries), 0, len(keys) - 1)
    return np.where(keys[at] == queries, counts[at], 0).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# 6. The command line
# ---------------------------------------------------------------------------------------------


def _parse_overrides(pairs: Sequence[str], cls: type) -> dict[str, Any]:
    """``["lr=1e-3", "compile=false"]`` -> ``{"lr": 0.001, "compile": False}``, typed by the
    fields of the dataclass ``cls``."""
    readers = {"int": int, "float": float, "str": str, "bool": _read_bool,
               "int | None": _read_optional_int}
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"overrides take FIELD=VALUE with FIELD one of {sorted(types)}; "
                             f"got {pair!r}")
        try:
            out[key] = readers[types[key]](text)
        except (KeyError, ValueError):
            message = f"cannot read {text!r} as the {types[key]} that {key} takes"
            raise SystemExit(message) from None
    return out


def _read_bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
    return text.lower() in ("true", "1")


def _read_optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmbook.train",
        description="Pretrain the book's GPT on Shakespeare (Chapter 5). Without --out, train "
                    "the profile's model into the artifact cache that later chapters read; "
                    "with --out, a resumable run directory (log.jsonl, checkpoint.pt, "
                    "summary.json).")
    parser.add_argument("--profile", required=True, choices=["cpu", "gpu"])
    parser.add_argument("--out", type=Path,
                        help="run directory (checkpoints, log); omit for the cached model")
    parser.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
    parser.add_argument("--tokenizer", default="book", choices=["book", "bytes"])
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override training settings, e.g. --set steps=200 lr=1e-3")
    parser.add_argument("--model", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override model fields, e.g. --model n_layer=2 (needs --out)")
    parser.add_argument("--checkpoint-interval", type=int, default=None,
                        help="steps between checkpoints (default: only at the end)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:  # torchrun: batches already shard by rank; averaging gradients is later
        raise SystemExit("multi-process training (torchrun, WORLD_SIZE > 1) needs data "
                         "parallelism, which a later chapter adds; run a single process")
    rank = int(os.environ.get("RANK", "0"))
    profile = get_profile(args.profile)
    overrides = _parse_overrides(args.set, TrainSettings)
    if args.out is None:
        if args.model or args.resume:
            raise SystemExit("--model and --resume need --out (the book's cached model has "
                             "the profile's shape)")
        result = pretrained_model(profile, tokenizer=args.tokenizer,
                                  progress=not args.no_progress, **overrides)
        print(json.dumps({"artifact": str(result.path), **result.summary}, indent=1))
        return 0

    tok, splits = book_splits(profile, args.tokenizer)
    config = TrainConfig.for_profile(profile, vocab_size=tok.n_vocab,
                                     data=splits["train"].tokens.meta["sha256"], **overrides)
    if args.model:
        model = dataclasses.replace(config.model, **_parse_overrides(args.model, GPTConfig))
        config = dataclasses.replace(config, model=model)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "checkpoint.pt"
    if checkpoint.exists() and not args.resume:
        raise SystemExit(f"{checkpoint} exists: pass --resume to continue that run, or choose "
                         "another --out")
    trainer = Trainer(config, splits["train"], splits["val"], rank=rank, world_size=world_size,
                      log_path=args.out / LOG_FILE, progress=not args.no_progress)
    if args.resume:
        trainer.resume(checkpoint)
    elif trainer.log_path is not None:
        atomic_write_text(trainer.log_path, "")
    trainer.fit(checkpoint_path=checkpoint, checkpoint_interval=args.checkpoint_interval)
    val = trainer.evaluate(splits["val"])
    summary = {"steps": trainer.step, "val_loss": val.nats_per_token,
               "val_bpc": val.bits_per_char, "parameters": trainer.model.num_parameters(),
               "seconds": trainer.timings}
    if rank == 0:
        atomic_write_text(args.out / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, CheckpointError) as error:  # bad settings or a bad checkpoint: say which
        sys.exit(f"python -m llmbook.train: error: {error}")
