"""Tests for llmbook.optim (Chapter 5): AdamW, parameter groups, the schedule and clipping,
each against PyTorch."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from llmbook.model import GPT, GPTConfig
from llmbook.optim import AdamW, WarmupCosine, clip_grad_norm, make_optimizer, parameter_groups, set_learning_rate

TINY = GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=4, d_model=32, dropout=0.0)
SHAPES = [(8, 5), (5,), (3, 4, 2)]
HYPER = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY.__dict__, **overrides}))


def run_with_fixed_gradients(make_optimizer_fn, steps: int = 30) -> list[torch.Tensor]:
    """Parameters after ``steps`` updates with the same gradient sequence, whatever the
    optimizer."""
    params = [torch.randn(s, generator=torch.Generator().manual_seed(i)).requires_grad_()
              for i, s in enumerate(SHAPES)]
    opt = make_optimizer_fn([{"params": params[:1], "weight_decay": 0.1},
                             {"params": params[1:], "weight_decay": 0.0}])
    gen = torch.Generator().manual_seed(42)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    return params


# ------------------------------------------------------------------------------------------------------------
# AdamW


def test_adamw_matches_torch_bit_for_bit_on_fixed_gradients():
    ours = run_with_fixed_gradients(lambda groups: AdamW(groups, **HYPER))
    single = run_with_fixed_gradients(lambda groups: torch.optim.AdamW(groups, foreach=False, **HYPER))
    multi = run_with_fixed_gradients(lambda groups: torch.optim.AdamW(groups, foreach=True, **HYPER))
    fused = run_with_fixed_gradients(lambda groups: torch.optim.AdamW(groups, fused=True, **HYPER))
    for a, b, c, d in zip(ours, single, multi, fused):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
        torch.testing.assert_close(a, d, rtol=1e-6, atol=1e-7)  # one kernel; same maths, maybe other roundings


def test_adamw_matches_torch_step_for_step_training_a_model():
    """The same model, batches, groups and clipping: ours and torch's single-tensor AdamW stay
    identical."""
    ours_model, torch_model = tiny_model(), tiny_model()
    ours = AdamW(parameter_groups(ours_model, 0.1), **HYPER)
    theirs = torch.optim.AdamW(parameter_groups(torch_model, 0.1), foreach=False, **HYPER)
    gen = torch.Generator().manual_seed(3)
    for _ in range(15):
        x, y = (torch.randint(0, TINY.vocab_size, (4, 16), generator=gen) for _ in range(2))
        for model, opt in ((ours_model, ours), (torch_model, theirs)):
            opt.zero_grad()
            model(x, y)[1].backward()
            opt.step()
        for p, q in zip(ours_model.parameters(), torch_model.parameters()):
            assert torch.equal(p, q)


def test_adamw_state_dict_is_interchangeable_with_torch():
    model = tiny_model()
    ours = AdamW(parameter_groups(model, 0.1), **HYPER)
    x, y = torch.randint(0, TINY.vocab_size, (2, 2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        ours.zero_grad()
        model(x, y)[1].backward()
        ours.step()
    twin = copy.deepcopy(model)
    theirs = torch.optim.AdamW(parameter_groups(twin, 0.1), foreach=False, **HYPER)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # a state_dict shares its tensors
    for m, opt in ((model, ours), (twin, theirs)):
        for _ in range(3):
            opt.zero_grad()
            m(x, y)[1].backward()
            opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert set(ours.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_adamw_first_step_moves_each_weight_by_lr():
    """With bias correction the first update is lr * g / (|g| + eps): every coordinate moves by
    ~lr."""
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    p.grad = torch.tensor([1e-3, -50.0, 7.0])
    AdamW([p], lr=0.1, weight_decay=0.0).step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -1.9, 2.9]), rtol=0, atol=1e-5)


def test_adamw_decoupled_weight_decay_shrinks_weights_without_gradient_signal():
    p = nn.Parameter(torch.full((4,), 2.0))
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros(4)
    opt.step()  # zero gradient: Adam's step is 0, only the decay acts
    torch.testing.assert_close(p.detach(), torch.full((4,), 2.0 * (1 - 0.1 * 0.5)))


def test_adamw_skips_parameters_without_gradients():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    a.grad = torch.ones(3)
    opt = AdamW([a, b], lr=0.1)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "lr"), (dict(betas=(0.9, 1.0)), "betas"), (dict(eps=0.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_adamw_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW([nn.Parameter(torch.ones(2))], **kwargs)


def test_adamw_rejects_sparse_gradients():
    emb = nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        AdamW(emb.parameters()).step()


# ------------------------------------------------------------------------------------------------------------
# Parameter groups and make_optimizer


def test_parameter_groups_split_by_shape_and_cover_every_parameter_once():
    model = tiny_model()  # tied embeddings: the head shares the token table
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert id(model.tok_emb.weight) in {id(p) for p in decay["params"]}
    assert id(model.blocks[0].norm1.weight) in {id(p) for p in no_decay["params"]}


def test_parameter_groups_skip_frozen_parameters():
    model = tiny_model()
    model.tok_emb.weight.requires_grad_(False)
    decay, _ = parameter_groups(model, 0.1)
    assert id(model.tok_emb.weight) not in {id(p) for p in decay["params"]}


@pytest.mark.parametrize("implementation, cls", [("ours", AdamW), ("torch", torch.optim.AdamW),
                                                 ("fused", torch.optim.AdamW)])
def test_make_optimizer_implementations(implementation, cls):
    opt = make_optimizer(tiny_model(), lr=1e-3, weight_decay=0.1, implementation=implementation)
    assert type(opt) is cls
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    if implementation == "fused":
        assert opt.defaults["fused"]
    set_learning_rate(opt, 5e-4)
    assert all(g["lr"] == 5e-4 for g in opt.param_groups)


def test_make_optimizer_rejects_unknown_implementation():
    with pytest.raises(ValueError, match="unknown optimizer implementation"):
        make_optimizer(tiny_model(), lr=1e-3, weight_decay=0.1, implementation="adam")


# ------------------------------------------------------------------------------------------------------------
# Schedule


def test_warmup_cosine_matches_torch_schedulers():
    """Linear warm-up then cosine decay, against LinearLR + CosineAnnealingLR chained by
    SequentialLR."""
    max_lr, min_lr, warmup, total = 1e-3, 1e-4, 10, 60
    schedule = WarmupCosine(max_lr, min_lr, warmup, total)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=max_lr)
    reference = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr),
    ], milestones=[warmup])
    for step in range(total + 1):
        assert schedule(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15), step
        opt.step()
        reference.step()


def test_warmup_cosine_shape():
    schedule = WarmupCosine(1.0, 0.1, 4, 20)
    lrs = [schedule(s) for s in range(25)]
    assert lrs[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # decays monotonically after warm-up
    assert lrs[12] == pytest.approx(0.55)  # halfway through the decay: the midpoint of max and min
    assert lrs[20:] == [0.1] * 5  # the floor, for any step past the end
    assert WarmupCosine(1.0, 0.0, 0, 10)(0) == 1.0  # no warm-up: start at the peak


@pytest.mark.parametrize("args", [(1.0, 2.0, 1, 10), (1.0, -0.1, 1, 10), (1.0, 0.1, 10, 10), (1.0, 0.1, -1, 10)])
def test_warmup_cosine_rejects_bad_settings(args):
    with pytest.raises(ValueError):
        WarmupCosine(*args)


def test_warmup_cosine_rejects_negative_step():
    with pytest.raises(ValueError, match="step"):
        WarmupCosine(1.0, 0.1, 2, 10)(-1)


# ------------------------------------------------------------------------------------------------------------
# Clipping


def _grads_pair(scale: float):
    a, b = tiny_model(), tiny_model()
    x, y = torch.randint(0, TINY.vocab_size, (2, 2, 16), generator=torch.Generator().manual_seed(0))
    for model in (a, b):
        (model(x, y)[1] * scale).backward()
    return a, b


@pytest.mark.parametrize("scale, max_norm", [(100.0, 1.0), (1.0, 1e6)])  # clipped, and left alone
def test_clip_grad_norm_matches_torch(scale, max_norm):
    ours, theirs = _grads_pair(scale)
    norm = clip_grad_norm(ours.parameters(), max_norm)
    reference = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm, foreach=False)
    assert torch.equal(norm, reference)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p.grad, q.grad)
    after = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in ours.parameters()))
    assert after == pytest.approx(min(float(norm), max_norm), rel=1e-4)


def test_clip_grad_norm_edge_cases():
    assert float(clip_grad_norm([nn.Parameter(torch.ones(2))], 1.0)) == 0.0  # no gradients at all
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm([], 0.0)
