"""The training loop: one loop for every objective. Chapter 5 walks through it; Chapters 6
to 8 plug into it.

A :class:`Trainer` is made of a run configuration (:class:`~llmbook.train.TrainConfig`), a
batch source, an objective and an evaluator:

- a batch source has ``next_batch()``, ``state_dict()`` and ``load_state_dict()``
  (:class:`llmbook.batches.BatchStream` for pretraining), and yields CPU tensors;
- an objective is ``objective(model, batch) -> (loss, metrics)``, the loss a mean over
  ``objective.count(batch)`` units (:mod:`llmbook.objectives`);
- an evaluator is ``evaluator(trainer) -> {name: value}``, with ``val_loss`` among them for
  ``keep_best`` (:class:`~llmbook.train.TextEvaluator` for pretraining).

``wrap`` turns the model into what the loop calls forward (data parallelism, FSDP,
activation checkpointing, compilation: Chapter 6); the plain model stays ``trainer.model``,
for evaluation and checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from tqdm import tqdm

from llmbook.artifacts import atomic_write_bytes, atomic_write_text
from llmbook.batches import BatchStream
from llmbook.costs import flops_per_token
from llmbook.measure import mfu, peak_flops, synchronize
from llmbook.model import GPT
from llmbook.objectives import LanguageModelObjective, Objective
from llmbook.optim import WarmupCosine, clip_grad_norm, make_optimizer, set_learning_rate
from llmbook.train.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, check_same_run,
                                      encode_checkpoint, load_checkpoint)
from llmbook.train.config import TrainConfig
from llmbook.train.distributed import (load_model_state, load_optimizer_state, model_state,
                                       optimizer_state)
from llmbook.train.evaluation import EvalResult, TokenSplit, TextEvaluator, evaluate
from llmbook.train.runtime import (autocast, capture_rng, deterministic_algorithms,
                                   restore_rng, to_device)


class BatchSource(Protocol):
    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


Evaluator = Callable[["Trainer"], dict]


class Trainer:
    """The training loop. Chapter 5 walks through it.

    One optimizer step sets the learning rate from the schedule; runs ``grad_accum``
    micro-batches forward (under autocast) and backward, each weighted by its share of the
    step's units (tokens), so that the gradients add up to those of the whole batch; clips
    the gradients' global norm; steps AdamW. Every ``log_interval`` steps a record of the
    training loss, learning rate, gradient norm and throughput joins the run log; every
    ``eval_interval`` steps the evaluator scores the model.

    ``rank`` and ``world_size`` give each process of a multi-process run (``torchrun``) its
    share of the batches; only rank 0 writes logs and checkpoints and shows progress.
    """

    def __init__(self, config: TrainConfig, batches: BatchSource, *,
                 objective: Objective | None = None, evaluator: Evaluator | None = None,
                 model: nn.Module | None = None, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1,
                 wrap: Callable[[nn.Module], nn.Module] | None = None,
                 log_path: Path | str | None = None, progress: bool = False,
                 compile_options: dict | None = None) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.config, self.settings = config, config.settings
        self.rank, self.world_size = rank, world_size
        self.device = _check_device(device)
        self.batches = batches
        self.objective = objective or LanguageModelObjective()
        self.evaluator = evaluator

        # The run owns its random stream (initial weights, dropout): seeded here, swapped in
        # while it trains and saved in checkpoints, so that it neither depends on nor
        # disturbs other users of PyTorch's global generator.
        outer = capture_rng(self.device)
        torch.manual_seed(config.seed)
        if model is None:
            model = GPT(config.model)
        elif getattr(model, "config", config.model) != config.model:
            raise ValueError("the model's config differs from the run's config.model; "
                             "build the TrainConfig from the model you train")
        self.model = model.to(self.device)
        self._rng, self._rng_active = capture_rng(self.device), False
        restore_rng(outer, self.device)
        s = self.settings
        self.forward = self.model  # what training calls; evaluation uses the plain model
        if s.compile:
            self.forward = torch.compile(self.forward, **(compile_options or {}))
        if wrap is not None:
            self.forward = wrap(self.forward)
        self.optimizer = make_optimizer(self.model, lr=s.lr, weight_decay=s.weight_decay,
                                        betas=(s.beta1, s.beta2),
                                        implementation=s.optimizer)
        self.schedule = WarmupCosine(s.lr, s.min_lr, s.warmup_steps, s.steps)
        self.autocast_dtype = torch.bfloat16 if s.dtype == "bfloat16" else None
        self.flops_per_token = flops_per_token(config.model)
        self.peak_flops = peak_flops(self.device, s.dtype)

        self.step = 0  # optimizer steps taken
        self.log: list[dict] = []
        self.best: dict | None = None  # {"step", "val_loss", "model"} with keep_best
        # training losses since the last record
        self._pending = {"loss_sum": 0.0, "steps": 0}
        self.timings = {"train": 0.0, "eval": 0.0, "checkpoint": 0.0, "log": 0.0}  # seconds
        self.log_path = Path(log_path) if log_path is not None and rank == 0 else None
        self.progress = progress and rank == 0

    @classmethod
    def for_text(cls, config: TrainConfig, train: TokenSplit, val: TokenSplit,
                 **options: Any) -> Trainer:
        """Pretraining (Chapter 5): random windows of ``train``, next-token cross-entropy,
        and the loss on samples of ``train`` and ``val`` at each evaluation."""
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        for split in (train, val):
            if split.tokens.vocab_size > config.model.vocab_size:
                raise ValueError(f"the {split.name} tokens use a vocabulary of "
                                 f"{split.tokens.vocab_size} but the model has "
                                 f"{config.model.vocab_size}; size the model to the "
                                 "tokenizer")
        rank, world_size = options.get("rank", 0), options.get("world_size", 1)
        s = config.settings
        batches = BatchStream(train.tokens, config.model.block_size, s.batch_size,
                              seed=config.seed, rank=rank, world_size=world_size,
                              accum=s.grad_accum)
        return cls(config, batches, evaluator=TextEvaluator(train, val), **options)

    # -- one step -------------------------------------------------------------------------

    def train_step(self) -> tuple[Tensor, Tensor]:
        """One optimizer step. Returns the training loss (the weighted mean over the step's
        micro-batches) and the gradient norm before clipping, as tensors on the device:
        reading them makes the CPU wait for the GPU, so the loop reads them only when it
        logs."""
        s = self.settings
        set_learning_rate(self.optimizer, self.schedule(self.step))
        micro = [self.batches.next_batch() for _ in range(s.grad_accum)]
        counts = [self.objective.count(batch) for batch in micro]  # on the CPU: no waiting
        total = self._global_count(sum(counts))
        step_loss = torch.zeros((), device=self.device)
        for i, (batch, count) in enumerate(zip(micro, counts)):
            # Each micro-batch's mean, weighted by its share of the global count: the sum is
            # the mean over the whole batch. Wrappers average gradients over ranks, so each
            # rank's share is scaled by world_size. An empty micro-batch weighs 0.
            weight = count * self.world_size / max(total, 1)
            last = i == len(micro) - 1
            with self._gradient_sync(enabled=last):
                with autocast(self.device.type, self.autocast_dtype):
                    loss, _ = self.objective(self.forward, to_device(batch, self.device))
                (loss * weight).backward()
            step_loss += loss.detach() * weight
        # grad_clip 0 means no clipping: an infinite threshold still measures the norm
        grad_norm = clip_grad_norm(self.model.parameters(), s.grad_clip or math.inf)
        if total > 0:  # a step with nothing to learn from leaves the weights alone
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return step_loss, grad_norm

    def _global_count(self, count: int) -> int:
        if self.world_size == 1:
            return count
        total = torch.tensor([count], dtype=torch.int64)
        dist.all_reduce(total)  # gloo reduces CPU tensors; NCCL needs them on the GPU
        return int(total.item())

    @contextlib.contextmanager
    def _gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Micro-batches before the last skip the gradient all-reduce of data parallelism
        (DDP's ``no_sync``; FSDP2's ``set_requires_gradient_sync``): one per step is
        enough, since gradients accumulate locally."""
        module = self.forward
        if enabled or self.world_size == 1:
            yield
        elif hasattr(module, "no_sync"):
            with module.no_sync():
                yield
        elif hasattr(module, "set_requires_gradient_sync"):
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)
        else:
            yield

    def evaluate(self, split: TokenSplit, max_tokens: int | None = None) -> EvalResult:
        """Score ``split`` (or ``max_tokens`` of it) in batches of the training micro-batch
        (which fits in memory, and needs less without gradients), or of 8192 tokens if
        more."""
        batch_size = max(self.settings.batch_size, 8192 // self.config.model.block_size)
        return evaluate(self.model, split, batch_size=batch_size, max_tokens=max_tokens,
                        autocast_dtype=self.autocast_dtype)

    # -- the loop -------------------------------------------------------------------------

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
            clock = _Clock()
            while self.step < until:
                loss, grad_norm = self.train_step()
                self._pending["loss_sum"] += loss  # a tensor: no waiting for the GPU
                self._pending["steps"] += 1
                last = self.step == s.steps
                if self.step % s.log_interval == 0 or last:
                    synchronize(self.device)  # let the GPU finish: an honest clock
                    steps, seconds = clock.lap(self.timings)
                    record = self._train_record(grad_norm, steps, seconds)
                    self._append(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                else:
                    clock.lap(self.timings, reset=False)
                bar.update(1)
                if (self.evaluator is not None
                        and (self.step % s.eval_interval == 0 or last)):
                    with self._timed("eval"):
                        self._append(self._eval_record())
                if checkpoint_path is not None and (self.step == until or (
                        checkpoint_interval and self.step % checkpoint_interval == 0)):
                    with self._timed("checkpoint"):
                        self.save_checkpoint(checkpoint_path)
                clock.restart()
        bar.close()
        return self.log

    @contextlib.contextmanager
    def _timed(self, what: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[what] += time.perf_counter() - start

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
        loss_sum = torch.as_tensor(self._pending["loss_sum"], dtype=torch.float32)
        if self.world_size > 1:  # each rank holds its share of the global mean
            loss_sum = loss_sum.detach().to(self.device)
            dist.all_reduce(loss_sum)
            loss_sum = loss_sum / self.world_size
        loss = float(loss_sum) / self._pending["steps"]
        if not math.isfinite(loss):
            raise FloatingPointError(f"the training loss is {loss} at step {self.step}: "
                                     "the run diverged; lower the learning rate or check "
                                     "the data")
        self._pending = {"loss_sum": 0.0, "steps": 0}
        tokens = self.config.tokens_per_step * self.world_size
        tokens_per_s = timed_steps * tokens / max(seconds, 1e-9)
        utilisation = None
        if self.peak_flops is not None:  # achieved model FLOP/s over the device's peak
            utilisation = mfu(tokens_per_s / self.world_size, self.flops_per_token,
                              self.peak_flops)
        return {"kind": "train", "step": self.step, "tokens": self.step * tokens,
                "lr": self.optimizer.param_groups[0]["lr"], "loss": loss,
                "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_s,
                "mfu": utilisation}

    def _eval_record(self) -> dict:
        metrics = self.evaluator(self)
        val_loss = metrics.get("val_loss")
        if self.settings.keep_best and val_loss is not None and (
                self.best is None or val_loss < self.best["val_loss"]):
            weights = {k: v.detach().to("cpu", copy=True)
                       for k, v in model_state(self.model).items()}
            self.best = {"step": self.step, "val_loss": val_loss, "model": weights}
        tokens = self.step * self.config.tokens_per_step * self.world_size
        return {"kind": "eval", "step": self.step, "tokens": tokens, **metrics}

    def _append(self, record: dict) -> None:
        with self._timed("log"):
            self.log.append(record)
            if self.log_path is not None:
                with self.log_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")

    def use_best(self) -> None:
        """Load the weights ``keep_best`` kept: the lowest held-out loss at an
        evaluation."""
        if self.best is not None:
            load_model_state(self.model, self.best["model"])

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue the run exactly, for :meth:`save_checkpoint`."""
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "config": self.config.identity(self.world_size),
            "step": self.step,
            "model": model_state(self.model),  # whole tensors, also under FSDP
            "optimizer": optimizer_state(self.model, self.optimizer),
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
        state = self.state_dict()  # every rank: gathering a sharded model takes them all
        if self.rank == 0:
            atomic_write_bytes(path, encode_checkpoint(state))
        return path

    def resume(self, path: Path | str) -> None:
        """Continue from the checkpoint at ``path``, which must come from the same run (the
        same :meth:`TrainConfig.identity`)."""
        state = load_checkpoint(path, map_location=self.device)
        check_same_run(path, self.config.identity(self.world_size), state["config"])
        load_model_state(self.model, state["model"])
        load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.batches.load_state_dict(state["data"])
        self.step = state["step"]
        self.log = state["log"]
        self._pending = dict(state["pending"])
        self.best = state["best"]
        self._rng = {k: None if v is None else v.cpu() for k, v in state["rng"].items()}
        if self._rng_active:
            restore_rng(self._rng, self.device)
        if self.log_path is not None:  # the log continues from the checkpoint's records
            atomic_write_text(self.log_path,
                              "".join(json.dumps(r) + "\n" for r in self.log))


class _Clock:
    """Training time between log records, leaving out evaluation and checkpoints."""

    def __init__(self) -> None:
        self.steps, self.seconds = 0, 0.0
        self.restart()

    def restart(self) -> None:
        self.tick = time.perf_counter()

    def lap(self, timings: dict, reset: bool = True) -> tuple[int, float]:
        elapsed = time.perf_counter() - self.tick
        timings["train"] += elapsed
        self.steps, self.seconds = self.steps + 1, self.seconds + elapsed
        steps, seconds = self.steps, self.seconds
        if reset:
            self.steps, self.seconds = 0, 0.0
        return steps, seconds


def _check_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {str(device)!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("this run is configured for CUDA but no GPU is available; "
                               "use the cpu profile")
        torch.backends.cuda.matmul.allow_tf32 = True  # for matmuls left outside autocast
        torch.backends.cudnn.allow_tf32 = True
    return device
