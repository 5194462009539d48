"""The loss pieces of post-training: small functions with tensor contracts. Chapter 8.

Shapes: ``B`` sequences (responses), ``T`` positions, ``V`` vocabulary, ``P`` prompts
and ``G`` answers per prompt (a group). A ``mask`` is ``(B, T)``, 1 where a token is
trained (an assistant's reply) and 0 elsewhere (prompt, padding); it may be bool or
float. Every function checks its shapes and raises a ValueError naming the mismatch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from llmbook.objectives import masked_mean, masked_sum, token_log_probs


def _same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes must match, got {shapes}")


def token_entropy(logits: Tensor) -> Tensor:
    """The entropy (nats) of the next-token distribution at each position: ``(B, T, V)``
    -> ``(B, T)``. A policy whose entropy collapses to 0 has stopped exploring."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, V), got {tuple(logits.shape)}")
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def sequence_logprobs(logprobs: Tensor, mask: Tensor, average: bool = False) -> Tensor:
    """A response's log-probability, ``(B, T)`` -> ``(B,)``: the sum over its tokens
    (``average=True``: the mean, which favours long answers less in DPO but is not a
    log-probability any more)."""
    return (
        masked_mean(logprobs, mask, dim=-1)
        if average
        else masked_sum(logprobs, mask, dim=-1)
    )


def constant_groups(rewards: Tensor) -> Tensor:
    """``(P, G)`` -> ``(P,)`` bool: groups whose rewards are all equal. They give zero
    advantage, hence no gradient: a prompt too easy or too hard teaches nothing."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(
            f"rewards must be (P prompts, G >= 2 answers), got {tuple(rewards.shape)}"
        )
    return rewards.amax(1) == rewards.amin(1)


def group_advantages(rewards: Tensor, scale: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO's advantages, ``(P, G)`` -> ``(P, G)``: each reward minus its group's mean,
    divided by the group's standard deviation (``scale=True``, Shao et al., 2024;
    unbiased, as ``torch.std``) or not (``scale=False``, Dr. GRPO). Constant groups give
    exactly 0."""
    constant = constant_groups(rewards)
    centred = rewards - rewards.mean(1, keepdim=True)
    if scale:
        centred = centred / (rewards.std(1, keepdim=True) + eps)
    return torch.where(constant.unsqueeze(1), torch.zeros_like(centred), centred)


def _check_advantages(logprobs: Tensor, advantages: Tensor) -> None:
    if logprobs.dim() != 2 or advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"logprobs must be (B, T) and advantages (B,), got "
            f"{tuple(logprobs.shape)} and {tuple(advantages.shape)}"
        )


def policy_gradient_loss(logprobs: Tensor, advantages: Tensor) -> Tensor:
    """REINFORCE's per-token loss ``-A * log pi(token)``, ``(B, T)`` and ``(B,)`` ->
    ``(B, T)``. Aggregate it with :func:`masked_mean` or :func:`masked_sum`."""
    _check_advantages(logprobs, advantages)
    return -advantages.detach().unsqueeze(1) * logprobs


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, epsilon: float = 0.2
) -> tuple[Tensor, Tensor]:
    """PPO's clipped per-token loss (Schulman et al., 2017), as GRPO uses it: ``(B,
    T)``.

    ``ratio = pi / pi_old``; the loss is ``-min(ratio * A, clip(ratio, 1-eps, 1+eps) *
    A)``, so a token whose ratio has already moved ``eps`` in the direction ``A``
    favours gets no more gradient. Returns the loss and a bool ``(B, T)`` of where the
    clip was active.
    """
    _check_advantages(logprobs, advantages)
    _same_shape(logprobs=logprobs, old_logprobs=old_logprobs)
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    ratio = torch.exp(logprobs - old_logprobs.detach())
    adv = advantages.detach().unsqueeze(1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - epsilon, 1.0 + epsilon) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled tokens (Schulman's k3): ``r -
    log r - 1`` with ``r = pi_ref / pi``. Never negative; its expectation under pi is
    the exact KL. Same shapes in and out."""
    _same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1.0


class DPOOutput(NamedTuple):
    loss: Tensor  # (B,)
    chosen_reward: Tensor  # (B,): beta * (log pi - log pi_ref) of the chosen answer
    rejected_reward: Tensor  # (B,)
    margin: Tensor  # (B,): chosen_reward - rejected_reward


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float = 0.1,
) -> DPOOutput:
    """DPO's per-example loss from summed log-probabilities, each ``(B,)`` (Rafailov et
    al., 2023): ``-log sigmoid(beta * ((pc - rc) - (pr - rr)))``, with the implicit
    rewards."""
    _same_shape(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
    )
    if policy_chosen.dim() != 1:
        raise ValueError(
            f"log-probabilities must be (B,), got {tuple(policy_chosen.shape)}"
        )
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    chosen = beta * (policy_chosen - ref_chosen.detach())
    rejected = beta * (policy_rejected - ref_rejected.detach())
    margin = chosen - rejected
    return DPOOutput(
        -F.logsigmoid(margin), chosen.detach(), rejected.detach(), margin.detach()
    )


def bradley_terry_loss(reward_chosen: Tensor, reward_rejected: Tensor) -> Tensor:
    """A reward model's per-pair loss, ``(B,)`` -> ``(B,)``: ``-log sigmoid(r_c -
    r_r)``, the negative log-likelihood of the preference under Bradley and Terry
    (1952)."""
    _same_shape(reward_chosen=reward_chosen, reward_rejected=reward_rejected)
    if reward_chosen.dim() != 1:
        raise ValueError(f"rewards must be (B,), got {tuple(reward_chosen.shape)}")
    return -F.logsigmoid(reward_chosen - reward_rejected)


def sft_loss(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Supervised fine-tuning, token-weighted: ``(B, T, V)``, ``(B, T)``, ``(B, T)`` ->
    the *sum* of ``-log p`` over trained targets and their count (both scalars).

    Micro-batches add their sums and counts, and the step divides once by the total
    count, so the gradient does not depend on how a batch is split, and an all-prompt
    micro-batch adds 0.
    """
    _same_shape(targets=targets, mask=mask)
    logprobs = token_log_probs(logits, targets)
    return -masked_sum(logprobs, mask), mask.to(logprobs.dtype).sum()
