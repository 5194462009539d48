"""Tests for llmbook.objectives: the losses and reductions every training stage is made of."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmbook.model import GPT, GPTConfig
from llmbook.objectives import (IGNORE_INDEX, LanguageModelObjective, bits_per_char,
                                cross_entropy, masked_mean, masked_sum, token_log_probs)

TINY = GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, d_model=16)


def test_cross_entropy_matches_torch_values_and_gradients():
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 11, generator=gen) * 4).requires_grad_()
    targets = torch.randint(0, 11, (3, 7), generator=gen)
    targets[0, :3] = IGNORE_INDEX
    ours = cross_entropy(logits, targets)
    theirs = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(ours, theirs)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(g_ours, g_theirs)


def test_cross_entropy_is_stable_for_huge_logits_and_equals_ln_v_for_uniform():
    logits = torch.tensor([[1e4, -1e4, 0.0]])
    assert float(cross_entropy(logits, torch.tensor([1]))) == 2e4
    uniform = cross_entropy(torch.zeros(5, 256), torch.arange(5))
    assert float(uniform) == pytest.approx(math.log(256))
    with pytest.raises(ValueError, match="vocabulary dimension"):
        cross_entropy(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def test_bits_per_char():
    assert bits_per_char(1000 * math.log(256), 1000) == pytest.approx(8.0)  # uniform bytes
    assert bits_per_char(100.0, 50) == pytest.approx(2 / math.log(2))
    with pytest.raises(ValueError, match="n_chars"):
        bits_per_char(1.0, 0)


def test_token_log_probs_are_minus_the_per_token_cross_entropy():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=gen)
    targets = torch.randint(0, 7, (2, 5), generator=gen)
    targets[1, 3:] = IGNORE_INDEX
    ours = token_log_probs(logits, targets)
    theirs = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    assert ours.shape == (2, 5)
    torch.testing.assert_close(ours, theirs)  # torch gives 0 at ignored positions too
    # by hand: log softmax of [0, ln 3] at the second entry is ln(3/4)
    pair = torch.tensor([[[0.0, math.log(3.0)]]])
    assert float(token_log_probs(pair, torch.tensor([[1]]))) == pytest.approx(math.log(0.75))
    with pytest.raises(ValueError, match="vocabulary dimension"):
        token_log_probs(logits, targets[:, :4])


def test_masked_sum_and_mean_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert float(masked_sum(values, mask)) == 3.0
    assert float(masked_sum(values, mask, normaliser=6.0)) == 0.5
    assert masked_sum(values, mask, dim=1).tolist() == [3.0, 0.0]
    assert float(masked_mean(values, mask)) == 1.5
    assert masked_mean(values, mask, dim=1).tolist() == [1.5, 0.0]  # an empty row: 0, not NaN
    assert float(masked_mean(values, torch.zeros_like(mask))) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        masked_mean(values, mask[:, :2])
    with pytest.raises(ValueError, match="normaliser"):
        masked_sum(values, mask, normaliser=0.0)


def test_language_model_objective_is_the_model_loss_bit_for_bit():
    torch.manual_seed(0)
    model = GPT(TINY)
    x = torch.randint(0, 50, (3, 8))
    y = torch.randint(0, 50, (3, 8))
    y[0, :5] = IGNORE_INDEX
    objective = LanguageModelObjective()
    ours, _ = objective(model, (x, y))
    _, theirs = model(x, y)
    assert torch.equal(ours, theirs)
    (g_ours,) = torch.autograd.grad(ours, model.tok_emb.weight)
    (g_theirs,) = torch.autograd.grad(model(x, y)[1], model.tok_emb.weight)
    assert torch.equal(g_ours, g_theirs)
    assert objective.count((x, y)) == 3 * 8 - 5


def test_an_empty_batch_gives_zero_loss_and_zero_gradients_not_nan():
    torch.manual_seed(0)
    model = GPT(TINY)
    x = torch.randint(0, 50, (2, 8))
    y = torch.full((2, 8), IGNORE_INDEX)
    loss, _ = LanguageModelObjective()(model, (x, y))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
