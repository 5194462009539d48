"""Post-training objectives and batch sources for the one training loop
(:class:`llmbook.train.Trainer`). Chapter 8.

Supervised fine-tuning needs no objective of its own: :class:`ExampleBatches` of
``(x, y)`` with ``y = -100`` outside the assistant's tokens, and
:class:`llmbook.objectives.LanguageModelObjective`. The reward model, DPO and GRPO each
have an objective here, ``objective(model, batch) -> (mean_loss, metrics)`` with
``count(batch)``; each keeps the per-step numbers the chapter plots in ``records``.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from llmbook.align import tasks
from llmbook.align.chat import END, IGNORE_INDEX, render_prompt
from llmbook.align.losses import (bradley_terry_loss, clipped_policy_loss,
                                  constant_groups, dpo_loss, group_advantages, kl_k3,
                                  sequence_logprobs)
from llmbook.align.sampling import decode_reply, sample_replies
from llmbook.costs import flops_per_token
from llmbook.objectives import masked_sum, token_log_probs


def pad(seqs: Sequence[Sequence[int]], value: int) -> Tensor:
    """Sequences of ids, right-padded with ``value`` to one length: ``(B, T)``."""
    length = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (length - len(s)) for s in seqs])


def lm_pair(ids: Sequence[int], mask: Sequence[int]) -> tuple[list[int], list[int]]:
    """Inputs and targets of a rendered conversation: ``x = ids[:-1]``, ``y = ids[1:]``
    with :data:`IGNORE_INDEX` where the target is not trained."""
    return list(ids[:-1]), [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]


def collate_sft(examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int
                ) -> tuple[Tensor, Tensor]:
    """Rendered ``(ids, mask)`` conversations -> an SFT batch ``(x, y)``, ``(B, T)``
    each; padding is never a target."""
    pairs = [lm_pair(ids, mask) for ids, mask in examples]
    return pad([x for x, _ in pairs], pad_id), pad([y for _, y in pairs], IGNORE_INDEX)


def collate_preferences(pairs, pad_id: int) -> dict[str, Tensor]:
    """Preference pairs ``((chosen_ids, chosen_mask), (rejected_ids, rejected_mask))``
    -> ``chosen``/``rejected`` ids ``(B, T)`` with ``*_real`` masks of their tokens (for
    the reward model) and ``*_x``/``*_y`` inputs and targets (for DPO), all ``(B, T)``
    or ``(B, T-1)`` over one common length."""
    flat = [c for c, _ in pairs] + [r for _, r in pairs]
    ids = pad([i for i, _ in flat], pad_id)
    real = pad([[1] * len(i) for i, _ in flat], 0)
    x, y = collate_sft(flat, pad_id)
    x, y = x[:, : ids.shape[1] - 1], y[:, : ids.shape[1] - 1]
    B = len(pairs)
    return {"chosen": ids[:B], "chosen_real": real[:B], "rejected": ids[B:],
            "rejected_real": real[B:], "chosen_x": x[:B], "chosen_y": y[:B],
            "rejected_x": x[B:], "rejected_y": y[B:]}


class ExampleBatches:
    """Seeded random batches of ``batch_size`` distinct examples, ``collate``d: a batch
    source for the Trainer (``next_batch``, ``state_dict``, ``load_state_dict``)."""

    def __init__(self, examples: Sequence, batch_size: int,
                 collate: Callable[[list], object], seed: int = 0) -> None:
        if not 0 < batch_size <= len(examples):
            raise ValueError(f"batch_size must be in [1, {len(examples)}] (the examples), "
                             f"got {batch_size}")
        self.examples, self.batch_size, self.collate = list(examples), batch_size, collate
        self.rng = np.random.default_rng(seed)

    def next_batch(self):
        picks = self.rng.choice(len(self.examples), self.batch_size, replace=False)
        return self.collate([self.examples[i] for i in picks])

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class RewardObjective:
    """Bradley-Terry on preference pairs; ``model`` is a
    :class:`~llmbook.align.rewards.RewardModel`. Counts pairs."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def __call__(self, model, batch):
        chosen = model(batch["chosen"], batch["chosen_real"])  # (B,)
        rejected = model(batch["rejected"], batch["rejected_real"])
        loss = bradley_terry_loss(chosen, rejected).mean()
        accuracy = (chosen > rejected).float().mean()
        self.records.append({"loss": float(loss.detach()),
                             "pair_accuracy": float(accuracy)})
        return loss, {"pair_accuracy": accuracy}

    def count(self, batch) -> int:
        return int(batch["chosen"].shape[0])


def response_logprobs(model, x: Tensor, y: Tensor, average: bool = False) -> Tensor:
    """Log-probability of each response under ``model``, summed (or averaged) over
    its trained targets: ``(B, T)`` inputs and targets -> ``(B,)``."""
    logits, _ = model(x)
    return sequence_logprobs(token_log_probs(logits, y), y != IGNORE_INDEX, average)


def training_flops(config, records: Sequence[dict], forward_passes: int) -> float:
    """The FLOPs of a post-training stage from its step records, each holding the
    ``positions`` (batch x context, padding included: it is computed) and the ``context``
    of its batch: per position one forward and backward pass of the policy plus
    ``forward_passes`` forward passes (the reference's, or for GRPO also sampling and the
    old log-probabilities), at :func:`llmbook.costs.flops_per_token`'s rates for that
    context."""
    return float(sum(
        r["positions"] * (flops_per_token(config, r["context"])
                          + forward_passes * flops_per_token(config, r["context"],
                                                             training=False))
        for r in records))


class DPOObjective:
    """DPO (Rafailov et al., 2023) against a frozen ``reference``: chosen and rejected
    answers in one forward pass each model. Counts pairs; records the summed
    log-probabilities, the implicit reward margin, the pair accuracy and the positions
    computed (for :func:`training_flops`: the policy's forward and backward, and
    ``forward_passes``, the reference's forward)."""

    forward_passes = 1

    def __init__(self, reference: nn.Module, beta: float, average: bool = False):
        self.reference = reference.eval().requires_grad_(False)
        self.beta, self.average = beta, average
        self.records: list[dict] = []

    def __call__(self, model, batch):
        x = torch.cat([batch["chosen_x"], batch["rejected_x"]])
        y = torch.cat([batch["chosen_y"], batch["rejected_y"]])
        B = batch["chosen_x"].shape[0]
        policy = response_logprobs(model, x, y, self.average)  # (2B,)
        with torch.no_grad():
            ref = response_logprobs(self.reference, x, y, self.average)
        out = dpo_loss(policy[:B], policy[B:], ref[:B], ref[B:], self.beta)
        seen = policy.detach()
        self.records.append({
            "loss": float(out.loss.detach().mean()), "chosen_logp": float(seen[:B].mean()),
            "rejected_logp": float(seen[B:].mean()),
            "margin": float(out.margin.mean()),
            "pair_accuracy": float((out.margin > 0).float().mean()),
            "positions": x.numel(), "context": x.shape[1]})
        return out.loss.mean(), {"margin": out.margin.mean()}

    def count(self, batch) -> int:
        return int(batch["chosen_x"].shape[0])


class GroupRollouts:
    """GRPO's batch source: each batch samples ``group`` answers to each of ``prompts``
    training items with the current ``policy``, rewards them with the task's checker
    and turns the rewards into group-normalised advantages. It also scores the answers
    under the policy as it was (the "old" log-probabilities of the ratio) and under the
    reference (for the KL penalty). ``records`` says per step the mean reward, how
    many groups had all rewards equal (no gradient from them) and the positions computed
    (for :func:`training_flops`): the objective's forward and backward, and
    ``forward_passes``: sampling (one forward pass over every position, with a KV
    cache), the old and the reference log-probabilities. ``reward(item, answer)``
    is the task's checker unless given (Chapter 8's reward-hacking run gives another)."""

    forward_passes = 3

    def __init__(self, policy: nn.Module, reference: nn.Module, items, tokenizer, *,
                 prompts: int, group: int, temperature: float, max_new_tokens: int,
                 seed: int = 0, reward=tasks.reward) -> None:
        if not 0 < prompts <= len(items):
            raise ValueError(f"prompts must be in [1, {len(items)}], got {prompts}")
        self.policy, self.reference = policy, reference.eval().requires_grad_(False)
        self.items, self.tokenizer = list(items), tokenizer
        self.prompts, self.group = prompts, group
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.seed, self.calls, self.reward = seed, 0, reward
        self.rng = random.Random(seed)
        self.records: list[dict] = []

    def next_batch(self) -> dict[str, Tensor]:
        picks = self.rng.sample(self.items, self.prompts)
        replies = sample_replies(self.policy, self.tokenizer, picks, n=self.group,
                                 temperature=self.temperature,
                                 max_new_tokens=self.max_new_tokens,
                                 seed=self.seed * 100_003 + self.calls)
        self.calls += 1
        seqs, rewards = [], []
        for item, group in zip(picks, replies):
            prompt = render_prompt(self.tokenizer, item.messages()[:1])
            for reply in group:
                seqs.append((prompt + reply, [0] * len(prompt) + [1] * len(reply)))
                rewards.append(self.reward(item, decode_reply(self.tokenizer, reply)))
        rewards_t = torch.tensor(rewards).view(self.prompts, self.group)
        x, y = collate_sft(seqs, self.tokenizer.special_tokens[END])
        device = next(self.policy.parameters()).device
        with torch.no_grad():
            old = token_log_probs(self.policy(x.to(device))[0], y.to(device)).cpu()
            ref = token_log_probs(self.reference(x.to(device))[0], y.to(device)).cpu()
        self.records.append({
            "reward": float(rewards_t.mean()),
            "constant_groups": int(constant_groups(rewards_t).sum()),
            "reply_tokens": float((y != IGNORE_INDEX).sum(1).float().mean()),
            "positions": x.numel(), "context": x.shape[1]})
        return {"x": x, "y": y, "advantages": group_advantages(rewards_t).flatten(),
                "old_logprobs": old, "ref_logprobs": ref}

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.calls = state["calls"]


class GRPOObjective:
    """The clipped ratio objective on rollouts, per token, plus ``kl`` times the k3
    estimate of KL(policy || reference); a token mean over the batch. Counts reply
    tokens."""

    def __init__(self, epsilon: float = 0.2, kl: float = 0.0) -> None:
        self.epsilon, self.kl = epsilon, kl
        self.records: list[dict] = []

    def __call__(self, model, batch):
        y = batch["y"]
        mask = y != IGNORE_INDEX
        logprobs = token_log_probs(model(batch["x"])[0], y)
        loss, clipped = clipped_policy_loss(logprobs, batch["old_logprobs"],
                                            batch["advantages"], self.epsilon)
        kl = kl_k3(logprobs, batch["ref_logprobs"])
        loss = loss + self.kl * kl
        n = max(int(mask.sum()), 1)
        self.records.append({"kl": float(masked_sum(kl.detach(), mask) / n),
                             "clipped": float(masked_sum(clipped.float(), mask) / n)})
        return masked_sum(loss, mask) / n, {}

    def count(self, batch) -> int:
        return int((batch["y"] != IGNORE_INDEX).sum())
