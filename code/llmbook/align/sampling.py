"""Asking a chat model: sampled or greedy answers to task items, and reward-model
scores of answers. Chapter 8.

Prompts of one length are batched together (the model has no padding mask, so rows of
a batch must start together); ``n`` answers to one prompt are ``n`` rows of a batch.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
import torch.nn as nn

from llmbook.align.chat import END, render_conversation, render_prompt
from llmbook.align.tasks import Item
from llmbook.generate import generate


def reply_ids(ids: Sequence[int], end_id: int) -> list[int]:
    """The ids of a sampled reply up to and including its first ``<|end|>`` (all of
    them when it was cut off by the length limit)."""
    ids = list(ids)
    return ids[: ids.index(end_id) + 1] if end_id in ids else ids


def sample_replies(model: nn.Module, tokenizer, items: Sequence[Item], *, n: int = 1,
                   temperature: float = 0.0, max_new_tokens: int = 12,
                   top_k: int | None = None, seed: int = 0
                   ) -> list[list[list[int]]]:
    """``n`` replies to each item's prompt, as ids ending with ``<|end|>`` when the
    model closed its turn: ``out[item][j]``. ``temperature=0`` is greedy (then the
    ``n`` replies are equal). Seeded: the same call gives the same replies."""
    if n < 1:
        raise ValueError(f"n must be a positive number of replies, got {n}")
    end_id = tokenizer.special_tokens[END]
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    prompts = [render_prompt(tokenizer, item.messages()[:1]) for item in items]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_length[len(prompt)].append(i)
    out: list[list[list[int]]] = [[] for _ in items]
    for length in sorted(by_length):
        group = by_length[length]
        idx = torch.tensor([prompts[i] for i in group for _ in range(n)], device=device)
        rows = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                        stop_tokens=[end_id], generator=generator)[:, length:]
        for r, row in enumerate(rows.tolist()):
            out[group[r // n]].append(reply_ids(row, end_id))
    return out


def decode_reply(tokenizer, ids: Sequence[int]) -> str:
    """A reply's text, without its closing ``<|end|>``."""
    end_id = tokenizer.special_tokens[END]
    return tokenizer.decode([i for i in ids if i != end_id])


def answers(model: nn.Module, tokenizer, items: Sequence[Item], **options) -> list[str]:
    """One answer per item, greedy unless ``temperature`` says otherwise."""
    replies = sample_replies(model, tokenizer, items, n=1, **options)
    return [decode_reply(tokenizer, r[0]) for r in replies]


@torch.no_grad()
def reward_scores(reward_model: nn.Module, tokenizer, item: Item,
                  replies: Sequence[str]) -> torch.Tensor:
    """The reward model's score of each reply to ``item``: ``(len(replies),)``."""
    seqs = [render_conversation(tokenizer, item.messages(r))[0] for r in replies]
    length = max(map(len, seqs))
    pad = tokenizer.special_tokens[END]
    device = next(reward_model.parameters()).device
    idx = torch.tensor([s + [pad] * (length - len(s)) for s in seqs], device=device)
    real = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in seqs],
                        device=device)
    was_training = reward_model.training
    reward_model.eval()
    try:
        return reward_model(idx, real).float().cpu()
    finally:
        reward_model.train(was_training)


def best_of_n(model: nn.Module, reward_model: nn.Module, tokenizer,
              items: Sequence[Item], *, n: int, temperature: float,
              max_new_tokens: int, seed: int = 0) -> list[str]:
    """For each item, ``n`` sampled answers, and the one the reward model scores
    highest (rejection sampling: no training of the policy, ``n`` times the cost)."""
    replies = sample_replies(model, tokenizer, items, n=n, temperature=temperature,
                             max_new_tokens=max_new_tokens, seed=seed)
    chosen = []
    for item, group in zip(items, replies):
        texts = [decode_reply(tokenizer, r) for r in group]
        scores = reward_scores(reward_model, tokenizer, item, texts)
        chosen.append(texts[int(scores.argmax())])
    return chosen


@torch.no_grad()
def rank_choices(model: nn.Module, tokenizer, items: Sequence[Item]) -> list[str]:
    """For each multiple-choice item, the candidate that ``model`` finds likeliest
    after the plain text ``"{prompt}\\nAnswer:"`` (the log-probability summed over the
    tokens of ``" " + candidate``): what a base model "knows" when asked as text, with
    no chat format to follow."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    picks = []
    try:
        for item in items:
            if not item.choices:
                raise ValueError(f"item of task {item.task!r} has no choices to rank")
            head = tokenizer.encode(f"{item.prompt}\nAnswer:")
            seqs = [head + tokenizer.encode(" " + c) for c in item.choices]
            length = max(map(len, seqs))
            idx = torch.tensor([s + [0] * (length - len(s)) for s in seqs], device=device)
            logp = torch.log_softmax(model(idx)[0][:, :-1].float(), dim=-1)
            scores = []
            for row, s in enumerate(seqs):
                targets = torch.tensor(s[len(head):], device=device)
                positions = torch.arange(len(head) - 1, len(s) - 1, device=device)
                scores.append(float(logp[row, positions, targets].sum()))
            picks.append(item.choices[max(range(len(scores)), key=scores.__getitem__)])
    finally:
        model.train(was_training)
    return picks
