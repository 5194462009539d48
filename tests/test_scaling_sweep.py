"""Tests for llmbook.scaling.sweep (Chapter 7): the IsoFLOP sweep's plan (shapes, tokens,
steps, schedules) without training, and one tiny run trained once and then read from the
cache."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from llmbook import data
from llmbook.costs import flops_per_token
from llmbook.profiles import PROFILES, ScalingSettings
from llmbook.scaling import book, sweep
from llmbook.scaling.accounting import parameter_count
from llmbook.scaling.fit import Run
from llmbook.train import Trainer
from llmbook.train.config import TrainConfig
from llmbook.train.evaluation import TokenSplit

CPU = PROFILES["cpu"]


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_plan_follows_the_shape_rule_and_the_budget(name):
    profile = PROFILES[name]
    s = profile.scaling
    vocab = 2048 if name == "cpu" else 8192
    plans = sweep.plan_sweep(profile, vocab, data="abc")
    assert len(plans) == len(s.budgets) * len(s.n_layers)
    assert len(s.budgets) >= (3 if name == "cpu" else 5)
    assert len(s.n_layers) >= (4 if name == "cpu" else 6)
    for plan in plans:
        m = plan.model
        assert m.d_model == s.width_per_layer * m.n_layer
        assert m.n_head * s.head_dim == m.d_model
        assert m.block_size == s.block_size and m.vocab_size == vocab
        tokens_per_step = s.batch_size * s.block_size
        assert plan.tokens == plan.steps * tokens_per_step
        # whole steps: the run's FLOPs are within half a step of the budget
        step_flops = flops_per_token(m) * tokens_per_step
        assert abs(plan.flops - plan.budget) <= 0.5 * step_flops
        assert plan.steps >= s.min_steps
        settings = plan.run.settings
        assert settings.steps == plan.steps and 1 <= settings.warmup_steps < plan.steps
        assert settings.eval_interval == plan.steps  # one evaluation, at the end
        assert settings.lr == s.lr and settings.min_lr == s.min_lr
        assert not settings.compile and settings.dropout == 0.0
        assert plan.run.data == "abc"
    # within a budget, deeper shapes are larger and train on fewer tokens
    for budget in s.budgets:
        group = [p for p in plans if p.budget == budget]
        sizes = [p.params.total for p in group]
        tokens = [p.tokens for p in group]
        assert sizes == sorted(sizes) and tokens == sorted(tokens, reverse=True)


def test_plan_counts_by_hand():
    # the 2-layer cpu shape: d_model = 2 * width, heads of head_dim
    s = CPU.scaling
    config = sweep.shape_config(CPU, 2, 2048)
    assert (config.n_layer, config.d_model) == (2, 2 * s.width_per_layer)
    plan = [p for p in sweep.plan_sweep(CPU, 2048) if p.model == config][0]
    expected = round(plan.budget / (flops_per_token(config) * s.batch_size * s.block_size))
    assert plan.steps == expected
    assert plan.params == parameter_count(config)


def test_too_short_runs_and_bad_settings_are_refused():
    tiny = dataclasses.replace(CPU.scaling, budgets=(1e6, 2e6, 3e6))
    with pytest.raises(ValueError, match="min_steps"):
        sweep.plan_sweep(dataclasses.replace(CPU, scaling=tiny), 2048)
    with pytest.raises(ValueError, match="n_layer must be positive"):
        sweep.shape_config(CPU, 0, 2048)
    good = dataclasses.asdict(CPU.scaling)
    for change in (dict(budgets=(1e10, 1e11)), dict(n_layers=(3, 2, 1)),
                   dict(width_per_layer=CPU.scaling.head_dim + 1), dict(min_lr=1.0),
                   dict(warmup_fraction=1.0), dict(eval_tokens=0)):
        with pytest.raises(ValueError):
            ScalingSettings(**{**good, **change})


def make_split(path: Path, ids: np.ndarray, name: str) -> TokenSplit:
    data.write_token_file(path / f"{name}.bin", ids.astype(np.uint8), vocab_size=256,
                          tokenizer="bytes")
    return TokenSplit(data.TokenFile(path / f"{name}.bin"), len(ids), name)


def tiny_sweep(tmp_path: Path) -> tuple[dict[str, TokenSplit], ScalingSettings]:
    """Byte-level splits of a repeated phrase, and a sweep of tiny shapes and budgets."""
    text = ("to be or not to be that is the question " * 400).encode()
    ids = np.frombuffer(text, dtype=np.uint8)
    splits = {"train": make_split(tmp_path, ids, "train"),
              "val": make_split(tmp_path, ids[:2000], "val")}
    settings = dataclasses.replace(CPU.scaling, budgets=(1e8, 2e8, 4e8), n_layers=(1, 2, 3),
                                   width_per_layer=16, block_size=16, batch_size=4,
                                   min_steps=2, curve_points=4, eval_tokens=256)
    return splits, settings


def test_one_tiny_run_trains_once_then_comes_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    splits, settings = tiny_sweep(tmp_path)
    profile = dataclasses.replace(CPU, scaling=settings)
    plan = sweep.plan_sweep(profile, 256)[0]
    first = sweep.train_run(plan, splits)
    assert first.plan == plan
    curve = first.curve()
    assert len(curve) >= 4 and curve[-1][0] == pytest.approx(plan.flops)
    # a repeated phrase is easy: the loss falls well below ln 256 = 5.55 nats
    assert first.val_loss < 4.0
    run = first.to_run()
    assert isinstance(run, Run) and run.n_params == plan.params.total
    assert first.to_run("kaplan").n_params == plan.params.non_embedding
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("must not retrain"))
    again = sweep.train_run(plan, splits)
    assert again.path == first.path and again.val_loss == first.val_loss
    assert again.log == first.log


def test_workers_train_the_runs_a_sequential_sweep_would(tmp_path, monkeypatch):
    # the same runs, in two worker processes of one thread each, and one after the other
    # in this process with one thread: equal to the last bit, and read back from the cache
    splits, settings = tiny_sweep(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers of one thread each
    try:
        monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path / "parallel"))
        parallel = dataclasses.replace(CPU, scaling=dataclasses.replace(settings, workers=2))
        together = sweep.run_sweep(parallel, splits, 256, budgets=(1e8,))
        monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path / "sequential"))
        torch.set_num_threads(1)
        alone = sweep.run_sweep(dataclasses.replace(CPU, scaling=settings), splits, 256,
                                budgets=(1e8,))
    finally:
        torch.set_num_threads(threads)
    assert len(together) == len(alone) == 3
    for a, b in zip(together, alone):
        assert a.plan == b.plan and a.log[-1] == b.log[-1]
        assert a.val_loss == b.val_loss
        assert a.path.is_relative_to(tmp_path / "parallel")
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path / "parallel"))
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("must not retrain"))
    again = sweep.run_sweep(parallel, splits, 256, budgets=(1e8,))
    assert [r.val_loss for r in again] == [r.val_loss for r in together]


# -- Chapter 5's budget spent as the law says (llmbook.scaling.book) --------------------


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_book_budget_is_chapter_5s_run_counted_like_the_sweep(name):
    profile = PROFILES[name]
    run, flops = book.book_budget(profile, 2048)
    assert run == TrainConfig.for_profile(profile, vocab_size=2048)
    s = profile.train
    tokens = s.steps * s.batch_size * s.grad_accum * run.model.block_size
    assert flops == flops_per_token(run.model) * tokens


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_book_shape_scales_chapter_5s_model_in_depth(name):
    profile = PROFILES[name]
    book_model = book.book_budget(profile, 2048)[0].model
    per_layer = book_model.d_model // book_model.n_layer
    head = book_model.d_model // book_model.n_head
    for n in (1, 2, 5):
        m = book.book_shape(profile, n, 2048)
        assert (m.n_layer, m.d_model, m.d_model // m.n_head) == (n, per_layer * n, head)
        assert m.dropout == 0.0
        assert dataclasses.replace(m, n_layer=book_model.n_layer, d_model=book_model.d_model,
                                   n_head=book_model.n_head, dropout=book_model.dropout) \
            == book_model  # nothing else changes
    # Chapter 5's own depth gives Chapter 5's model (the cpu one trains without dropout)
    assert book.book_shape(CPU, 4, 2048) == book.book_budget(CPU, 2048)[0].model
    with pytest.raises(ValueError, match="n_layer must be positive"):
        book.book_shape(CPU, 0, 2048)


def test_book_shape_refuses_a_width_that_is_no_whole_number_of_heads():
    odd = dataclasses.replace(CPU, model=dataclasses.replace(CPU.model, preset="gpt2-large"))
    with pytest.raises(ValueError, match="width per layer"):
        book.book_shape(odd, 2, 2048)  # 1280 wide in 36 layers: no whole width per layer


@pytest.mark.parametrize("family", [sweep.shape_config, book.book_shape])
def test_nearest_shape_is_nearest_in_ratio(family):
    counts = {n: parameter_count(family(CPU, n, 2048)).total for n in range(1, 25)}
    for n in (1, 3, 7, 12):  # an exact count gives its own depth
        assert book.nearest_shape(CPU, counts[n], 2048, family=family) == n
    # between two depths: the one nearer on a log scale, not on a linear one
    mid = math.sqrt(counts[6] * counts[7])
    assert book.nearest_shape(CPU, mid * 0.99, 2048, family=family) == 6
    assert book.nearest_shape(CPU, mid * 1.01, 2048, family=family) == 7
    assert book.nearest_shape(CPU, 1.0, 2048, family=family) == 1
    assert book.nearest_shape(CPU, 1e12, 2048, family=family) == 24  # the deepest searched
    with pytest.raises(ValueError, match="n_params must be positive"):
        book.nearest_shape(CPU, 0, 2048, family=family)


@pytest.mark.parametrize("name", ["cpu", "gpu"])
@pytest.mark.parametrize("family", [sweep.shape_config, book.book_shape])
def test_law_shaped_run_spends_chapter_5s_flops_at_its_context(name, family):
    profile = PROFILES[name]
    book_run, budget = book.book_budget(profile, 2048)
    run = book.law_shaped_run(profile, 3, 2048, data="abc", family=family)
    # the family's shape, with only the context changed to Chapter 5's
    assert run.model == dataclasses.replace(family(profile, 3, 2048),
                                            block_size=book_run.model.block_size)
    assert run.settings == sweep.run_settings(profile, run.settings.steps)
    assert run.data == "abc" and run.seed == profile.seed
    step_flops = flops_per_token(run.model) * run.tokens_per_step
    assert abs(run.settings.steps * step_flops - budget) <= 0.5 * step_flops


def test_law_shaped_run_refuses_a_budget_too_small():
    tiny = dataclasses.replace(CPU, train=dataclasses.replace(CPU.train, steps=1,
                                                              warmup_steps=0))
    with pytest.raises(ValueError, match="fewer than min_steps"):
        book.law_shaped_run(tiny, 3, 2048)
