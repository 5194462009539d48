"""Tests for llmbook.align.losses, rewards and evaluate: hand-computed values and
torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from llmbook.align import losses as L
from llmbook.align.evaluate import Estimate, bootstrap_ci, compare
from llmbook.align.rewards import RewardModel
from llmbook.model import GPT, GPTConfig
from torch.distributions import Categorical, kl_divergence


def test_token_logprobs_and_entropy_match_torch():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))
    expected = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    torch.testing.assert_close(L.token_log_probs(logits, targets), expected)
    torch.testing.assert_close(
        L.token_entropy(logits), Categorical(logits=logits).entropy()
    )
    # By hand: two equal logits -> log(1/2) and entropy log 2.
    two = torch.zeros(1, 1, 2)
    assert L.token_log_probs(
        two, torch.zeros(1, 1, dtype=torch.long)
    ).item() == pytest.approx(-math.log(2))
    assert L.token_entropy(two).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        L.token_log_probs(logits, targets[:, :4])


def test_sequence_logprobs_sum_or_average():
    logprobs = torch.tensor([[-1.0, -2.0, -9.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert L.sequence_logprobs(logprobs, mask).item() == -3.0
    assert L.sequence_logprobs(logprobs, mask, average=True).item() == -1.5


def test_group_advantages_by_hand():
    rewards = torch.tensor(
        [[1.0, 0.0, 0.0, 1.0], [0.3, 0.3, 0.3, 0.3], [1.0, 0.0, 0.0, 0.0]]
    )
    plain = L.group_advantages(rewards, scale=False)
    torch.testing.assert_close(plain[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    assert plain[1].tolist() == [0.0] * 4  # constant group: exactly zero
    torch.testing.assert_close(plain[2], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    scaled = L.group_advantages(rewards, eps=0.0)
    std0 = math.sqrt((4 * 0.25) / 3)  # unbiased std of (1, 0, 0, 1)
    torch.testing.assert_close(scaled[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / std0)
    assert scaled[1].tolist() == [0.0] * 4
    torch.testing.assert_close(scaled[2], plain[2] / rewards[2].std())
    assert L.constant_groups(rewards).tolist() == [False, True, False]
    with pytest.raises(ValueError):
        L.group_advantages(torch.ones(4))


def test_policy_gradient_gradient_is_advantage_times_score():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, requires_grad=True)
    targets = torch.randint(0, 5, (2, 3))
    advantages = torch.tensor([2.0, -1.0])
    loss = L.policy_gradient_loss(L.token_log_probs(logits, targets), advantages).sum()
    loss.backward()
    # d(-A log softmax_y)/dlogits = -A (onehot(y) - softmax).
    expected = -advantages[:, None, None] * (F.one_hot(targets, 5) - logits.softmax(-1))
    torch.testing.assert_close(logits.grad, expected.detach())


def test_clipped_loss_by_hand():
    old = torch.zeros(1, 4)
    # ratios 1.5, 1.5, 0.5, 0.5 against advantages +1, -1, -1, +1 (one token per row).
    new = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]])).reshape(4, 1).requires_grad_()
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, clipped = L.clipped_policy_loss(
        new, old.reshape(4, 1), advantages, epsilon=0.2
    )
    torch.testing.assert_close(loss.squeeze(1), torch.tensor([-1.2, 1.5, 0.8, -0.5]))
    assert clipped.squeeze(1).tolist() == [True, False, True, False]
    loss.sum().backward()
    # Clipped tokens get no gradient; the others get -A * ratio (d ratio / d log pi =
    # ratio).
    torch.testing.assert_close(new.grad.squeeze(1), torch.tensor([0.0, 1.5, 0.0, -0.5]))


def test_clipped_loss_on_policy_equals_policy_gradient():
    torch.manual_seed(2)
    logits = torch.randn(3, 4, 6, requires_grad=True)
    targets = torch.randint(0, 6, (3, 4))
    advantages = torch.randn(3)
    logprobs = L.token_log_probs(logits, targets)
    clipped, _ = L.clipped_policy_loss(logprobs, logprobs.detach(), advantages)
    (grad_clip,) = torch.autograd.grad(clipped.sum(), logits)
    plain = L.policy_gradient_loss(L.token_log_probs(logits, targets), advantages)
    (grad_plain,) = torch.autograd.grad(plain.sum(), logits)
    torch.testing.assert_close(grad_clip, grad_plain)
    with pytest.raises(ValueError):
        L.clipped_policy_loss(logprobs, logprobs, advantages[:2])


def test_kl_k3_is_unbiased_for_the_exact_kl():
    torch.manual_seed(3)
    p_logits, q_logits = torch.randn(8), torch.randn(8)
    logp, logq = p_logits.log_softmax(0), q_logits.log_softmax(0)
    k3 = L.kl_k3(logp, logq)
    assert (k3 >= 0).all()
    exact = kl_divergence(Categorical(logits=p_logits), Categorical(logits=q_logits))
    torch.testing.assert_close((logp.exp() * k3).sum(), exact)  # E_p[k3] = KL(p || q)
    assert L.kl_k3(logp, logp).abs().max().item() == 0.0
    # By hand: log r = log(q/p) = log 2 -> 2 - log 2 - 1.
    value = L.kl_k3(torch.tensor([0.0]), torch.tensor([math.log(2)]))
    assert value.item() == pytest.approx(1 - math.log(2))


def test_dpo_loss_by_hand_and_against_logsigmoid():
    pc, pr = torch.tensor([-10.0, -5.0]), torch.tensor([-12.0, -4.0])
    rc, rr = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -5.0])
    out = L.dpo_loss(pc, pr, rc, rr, beta=0.5)
    # Row 0: 0.5 * ((-10 + 11) - (-12 + 11)) = 1.0; row 1: 0.5 * (0 - 1) = -0.5.
    torch.testing.assert_close(out.margin, torch.tensor([1.0, -0.5]))
    torch.testing.assert_close(out.chosen_reward, torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(out.rejected_reward, torch.tensor([-0.5, 0.5]))
    expected = torch.tensor([math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5))])
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.loss, -F.logsigmoid(out.margin))
    with pytest.raises(ValueError):
        L.dpo_loss(pc, pr, rc, rr, beta=0.0)
    with pytest.raises(ValueError):
        L.dpo_loss(pc, pr[:1], rc, rr)


def test_bradley_terry_loss():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    loss = L.bradley_terry_loss(chosen, rejected)
    assert loss[1].item() == pytest.approx(math.log(2))
    bce = F.binary_cross_entropy_with_logits(
        chosen - rejected, torch.ones(3), reduction="none"
    )
    torch.testing.assert_close(loss, bce)


def test_sft_loss_is_split_invariant_and_empty_batch_is_harmless():
    torch.manual_seed(4)
    logits = torch.randn(4, 6, 9)
    targets = torch.randint(0, 9, (4, 6))
    mask = torch.rand(4, 6) > 0.5
    mask[2] = False  # a sequence with nothing to train
    total, count = L.sft_loss(logits, targets, mask)
    parts = [
        L.sft_loss(logits[i : i + 1], targets[i : i + 1], mask[i : i + 1])
        for i in range(4)
    ]
    torch.testing.assert_close(
        sum(p[0] for p in parts) / sum(p[1] for p in parts), total / count
    )
    assert parts[2][0].item() == 0.0 and parts[2][1].item() == 0.0


def test_reward_model_reads_the_last_real_token():
    torch.manual_seed(5)
    gpt = GPT(GPTConfig(vocab_size=40, block_size=12, n_layer=2, n_head=2, d_model=16))
    model = RewardModel(gpt).eval()
    torch.nn.init.normal_(model.head.weight)
    a, b = torch.randint(0, 40, (1, 7)), torch.randint(0, 40, (1, 4))
    padded = torch.cat([a, torch.cat([b, torch.zeros(1, 3, dtype=torch.long)], 1)])
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    scores = model(padded, mask)
    assert scores.shape == (2,)
    alone_a = model(a, torch.ones_like(a))
    alone_b = model(b, torch.ones_like(b))
    expected_b = model.head(gpt.hidden_states(b)[:, -1]).squeeze(-1)
    torch.testing.assert_close(scores, torch.cat([alone_a, alone_b]))
    torch.testing.assert_close(alone_b, expected_b)
    with pytest.raises(ValueError, match="right"):
        model(padded, torch.tensor([[1] * 7, [0] * 3 + [1] * 4]))
    with pytest.raises(ValueError):
        model(padded, torch.zeros_like(mask))


def test_bootstrap_ci():
    rng = np.random.default_rng(0)
    correct = (rng.random(400) < 0.7).astype(float)
    est = bootstrap_ci(correct, seed=1)
    assert est == bootstrap_ci(correct, seed=1)  # seeded
    assert est.low < est.mean < est.high and est.mean == correct.mean()
    # Against scipy's percentile bootstrap and the normal approximation, 1.96 *
    # sqrt(p(1-p)/n): both agree to Monte-Carlo noise, about 0.005 here; 0.01 is twice
    # that.
    ref = scipy.stats.bootstrap(
        (correct,), np.mean, method="percentile", n_resamples=10_000, random_state=2
    ).confidence_interval
    assert abs(est.low - ref.low) < 0.01 and abs(est.high - ref.high) < 0.01
    half = 1.96 * math.sqrt(est.mean * (1 - est.mean) / 400)
    assert abs((est.high - est.low) / 2 - half) < 0.01
    narrow = bootstrap_ci(np.tile(correct, 4), seed=1)
    assert (narrow.high - narrow.low) < 0.6 * (
        est.high - est.low
    )  # ~1/2 at 4x the items
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_compare_reads_intervals_not_means():
    base = Estimate(0.40, 0.35, 0.45)
    assert compare(Estimate(0.50, 0.46, 0.54), base) == "lies above"
    assert compare(base, Estimate(0.50, 0.46, 0.54)) == "lies below"
    # a higher mean whose interval reaches into the other's: the items cannot tell them apart
    assert compare(Estimate(0.50, 0.44, 0.56), base) == "overlaps"
    assert compare(Estimate(0.50, 0.45, 0.55), base) == "overlaps"  # touching ends overlap
    assert compare(base, base) == "overlaps"
    assert compare((0.5, 0.46, 0.54), (0.4, 0.35, 0.45)) == "lies above"  # plain tuples
    with pytest.raises(ValueError, match="low <= high"):
        compare((0.5, 0.6, 0.4), base)
