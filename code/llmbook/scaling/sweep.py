"""The book's own IsoFLOP sweep: for each FLOP budget, a family of shapes, each trained
with the Chapter 5 :class:`~llmbook.train.Trainer` on exactly its share of tokens.
Chapter 7.

The shapes come from one rule (``d_model = width_per_layer * n_layer``, heads of
``head_dim``), so that one number, the depth, orders them by size. A shape's run length
is ``D = C / flops_per_token`` (attention included) rounded to whole optimizer steps,
and its warm-up and cosine decay are stretched to that length: Hoffmann et al. found
that a schedule longer than the run overstates the loss of short runs, which is what
made Kaplan et al.'s small models look better than they were. Every run is a cached
artifact, so re-executing the chapter trains nothing.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch

from llmbook import data
from llmbook.artifacts import cached_artifact, is_cached
from llmbook.costs import flops_per_token
from llmbook.model import GPTConfig
from llmbook.profiles import Profile, ScalingSettings, TrainSettings
from llmbook.scaling.accounting import parameter_count
from llmbook.scaling.fit import Run
from llmbook.train.config import TrainConfig
from llmbook.train.evaluation import TokenSplit
from llmbook.train.loop import Trainer


def shape_config(profile: Profile, n_layer: int, vocab_size: int) -> GPTConfig:
    """The sweep's model of depth ``n_layer``: the profile's preset (its architecture)
    with ``d_model = width_per_layer * n_layer``, heads of ``head_dim`` and the sweep's
    context; no dropout (a run sees most tokens once or a few times)."""
    s = profile.scaling
    if n_layer < 1:
        raise ValueError(f"n_layer must be positive, got {n_layer}")
    d_model = s.width_per_layer * n_layer
    return GPTConfig.preset(profile.model.preset, vocab_size=vocab_size, n_layer=n_layer,
                            d_model=d_model, n_head=d_model // s.head_dim,
                            block_size=s.block_size, dropout=0.0)


@dataclass(frozen=True)
class PlannedRun:
    """One point of the sweep before it is trained: its budget, its model, and the
    schedule its token count implies."""

    budget: float  # the FLOPs asked for
    run: TrainConfig

    @property
    def model(self) -> GPTConfig:
        return self.run.model

    @property
    def steps(self) -> int:
        return self.run.settings.steps

    @property
    def flops_per_token(self) -> int:
        return flops_per_token(self.model)

    @property
    def tokens(self) -> int:
        """The tokens the run trains on: whole steps, so within half a step of
        ``budget / flops_per_token``."""
        return self.steps * self.run.tokens_per_step

    @property
    def flops(self) -> float:
        """What the run actually costs (attention included)."""
        return float(self.flops_per_token) * self.tokens

    @property
    def params(self):
        """Both counts of its parameters (:func:`~llmbook.scaling.accounting.
        parameter_count`)."""
        return parameter_count(self.model)


def run_settings(profile: Profile, steps: int) -> TrainSettings:
    """The profile's training settings adapted to a sweep run of ``steps`` steps: the
    sweep's learning rates, warm-up as a fraction of the run, a cosine ending at the last
    step, ``curve_points`` training-loss records, one evaluation at the end, no
    compilation (every shape would compile anew)."""
    s = profile.scaling
    warmup = min(steps - 1, max(1, round(s.warmup_fraction * steps)))
    return dataclasses.replace(
        profile.train, steps=steps, batch_size=s.batch_size, grad_accum=1, lr=s.lr,
        min_lr=s.min_lr, warmup_steps=warmup, dropout=0.0, eval_interval=steps,
        eval_tokens=s.eval_tokens, log_interval=max(1, steps // s.curve_points),
        compile=False, keep_best=False)


def plan_run(profile: Profile, budget: float, model: GPTConfig,
             data: str = "") -> PlannedRun:
    """``model`` trained with the sweep's recipe for ``round(C / (flops_per_token *
    tokens_per_step))`` steps of the sweep's batch. A run that would be shorter than
    ``min_steps`` is an error: shrink the model or raise the budget."""
    s: ScalingSettings = profile.scaling
    steps = round(budget / (flops_per_token(model) * s.batch_size * model.block_size))
    if steps < s.min_steps:
        raise ValueError(
            f"budget {budget:.3g} FLOPs buys {steps} steps of the {model.n_layer}-layer "
            f"shape, fewer than min_steps={s.min_steps}: raise the budget or use smaller "
            "shapes")
    run = TrainConfig(model, run_settings(profile, steps), seed=profile.seed, data=data)
    return PlannedRun(float(budget), run)


def plan_sweep(profile: Profile, vocab_size: int, data: str = "",
               budgets=None) -> list[PlannedRun]:
    """Every (budget, shape) run of ``profile.scaling`` (:func:`plan_run`), smallest budget
    first."""
    s: ScalingSettings = profile.scaling
    return [plan_run(profile, budget, shape_config(profile, n_layer, vocab_size), data)
            for budget in (s.budgets if budgets is None else budgets)
            for n_layer in s.n_layers]


@dataclass(frozen=True)
class RunSpec:
    """The key of one sweep run: the run, the FLOPs it was planned for, and the exact
    validation data it is scored on."""

    budget: float
    run: TrainConfig
    val_data: str  # SHA-256 of the validation tokens


@dataclass(frozen=True)
class SweepResult:
    """A trained sweep run: its plan, its log (training-loss records along the way and
    the final evaluation) and its final validation loss in nats per token."""

    plan: PlannedRun
    log: tuple[dict, ...]
    val_loss: float
    val_bpc: float
    seconds: float
    path: Path

    def curve(self) -> tuple[tuple[float, float], ...]:
        """``(flops, training loss)`` at each record, FLOPs counted with attention."""
        fpt = self.plan.flops_per_token
        return tuple((float(fpt * r["tokens"]), r["loss"]) for r in self.log
                     if r["kind"] == "train")

    def to_run(self, convention: str = "hoffmann") -> Run:
        """The record :mod:`llmbook.scaling.fit` takes, with ``N`` counted by
        ``convention`` (``"hoffmann"``: all parameters; ``"kaplan"``: no embeddings)."""
        return Run(n_params=self.plan.params.n(convention), tokens=self.plan.tokens,
                   flops=self.plan.flops, loss=self.val_loss, curve=self.curve())


def _spec(plan: PlannedRun, splits: dict[str, TokenSplit]) -> RunSpec:
    return RunSpec(plan.budget, plan.run, splits["val"].tokens.meta["sha256"])


def train_run(plan: PlannedRun, splits: dict[str, TokenSplit], *,
              device: str = "cpu") -> SweepResult:
    """Train one planned run (or read it from the cache): ``Trainer.for_text`` on the
    training split, scored at the end on ``eval_tokens`` of the validation split."""

    def build(out: Path) -> None:
        trainer = Trainer.for_text(plan.run, splits["train"], splits["val"],
                                   device=device)
        start = time.perf_counter()
        log = trainer.fit()
        seconds = time.perf_counter() - start
        final = [r for r in log if r["kind"] == "eval"][-1]
        (out / "log.json").write_text(json.dumps(log), encoding="utf-8")
        result = {"val_loss": final["val_loss"], "val_bpc": final["val_bpc"],
                  "seconds": seconds}
        (out / "result.json").write_text(json.dumps(result), encoding="utf-8")

    path = cached_artifact("sweep-run", _spec(plan, splits), build)
    result = json.loads((path / "result.json").read_text(encoding="utf-8"))
    log = json.loads((path / "log.json").read_text(encoding="utf-8"))
    return SweepResult(plan, tuple(log), result["val_loss"], result["val_bpc"],
                       result["seconds"], path)


def _split_files(splits: dict[str, TokenSplit]) -> dict[str, tuple[str, int, str]]:
    # what a worker process needs to reopen the memory-mapped splits (not their tokens)
    return {k: (str(s.tokens.path), s.n_chars, s.name) for k, s in splits.items()}


def _train_in_worker(plan: PlannedRun, files: dict[str, tuple[str, int, str]],
                     device: str) -> None:
    splits = {k: TokenSplit(data.TokenFile(Path(path)), n_chars, name)
              for k, (path, n_chars, name) in files.items()}
    train_run(plan, splits, device=device)


def _set_threads(n: int) -> None:
    torch.set_num_threads(n)


def run_sweep(profile: Profile, splits: dict[str, TokenSplit], vocab_size: int, *,
              budgets=None, progress: bool = False) -> list[SweepResult]:
    """Train (or read) every run of the profile's sweep on the book's splits.

    With ``profile.scaling.workers`` above 1, the runs not yet cached train that many at a
    time in separate processes, each with its share of PyTorch's threads: a sweep's
    models are too small to keep several cores busy with one run, so on the cpu profile
    two runs of one thread each finish sooner than two runs of two threads one after the
    other. A run's numbers depend on its thread count (the order of float sums), so with
    ``workers`` above 1 every run trains in a worker, even a lone one: which runs were
    cached never changes how the others train."""
    plans = plan_sweep(profile, vocab_size, splits["train"].tokens.meta["sha256"],
                       budgets)
    workers = profile.scaling.workers
    todo = [p for p in plans if not is_cached("sweep-run", _spec(p, splits), __name__)]
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plans), initial=len(plans) - len(todo), desc="sweep",
                   unit="run", leave=False)
    if workers > 1 and todo:  # even one run: its thread count must not depend on the rest
        threads = max(1, torch.get_num_threads() // workers)
        context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context,
                                 initializer=_set_threads, initargs=(threads,)) as pool:
            # the longest runs first, so that no worker is left with one at the end
            longest_first = sorted(todo, key=lambda p: (p.budget, p.steps), reverse=True)
            jobs = [pool.submit(_train_in_worker, p, _split_files(splits),
                                profile.device) for p in longest_first]
            for job in as_completed(jobs):
                job.result()  # a failed run raises here, with its worker's traceback
                if progress:
                    bar.update(1)
        todo = []
    results = []
    for p in plans:
        results.append(train_run(p, splits, device=profile.device))
        if progress and p in todo:
            bar.update(1)
    if progress:
        bar.close()
    return results
