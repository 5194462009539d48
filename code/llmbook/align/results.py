"""Measuring every post-training stage on the same held-out items, once, cached.
Chapter 8.

For each row of the chapter's table (the base model prompted, SFT, SFT with reward-model
best-of-n, DPO, GRPO): the answer to every held-out item, its reward, and the mean with
a bootstrap 95% interval; for each model, bits per character on the validation plays
(the cost in language modelling) and, for DPO and GRPO, the KL divergence to the SFT
model on sampled answers. Separately (:func:`meter_measure`), the reward-hacking runs on
the meter task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from llmbook.align import meter, tasks
from llmbook.align.chat import END, IGNORE_INDEX, render_prompt
from llmbook.align.losses import kl_k3
from llmbook.align.evaluate import bootstrap_ci
from llmbook.align.sampling import answers, best_of_n, rank_choices, sample_replies
from llmbook.align.stages import (METER_REWARDS, StageSpec, chat_base, dpo_stage,
                                  grpo_stage, meter_items, meter_stage, reward_stage,
                                  sft_stage, task_items)
from llmbook.artifacts import atomic_write_text, cached_artifact
from llmbook.objectives import token_log_probs
from llmbook.align.objectives import collate_sft
from llmbook.profiles import Profile
from llmbook.train import book_splits, evaluate

RESULTS = "results.json"
ROWS = ("base-ranked", "base", "sft", "best-of-n", "dpo", "grpo")


@dataclass(frozen=True)
class ResultsSpec:
    stages: StageSpec  # the settings and the pretrained model (stage "all")
    seed: int = 0


@torch.no_grad()
def kl_to_reference(policy, reference, tokenizer, items, *, max_new_tokens: int,
                    seed: int = 0) -> float:
    """KL(policy || reference) per answer, in nats: on one answer sampled from the
    policy (temperature 1) for each item, the sum over its tokens of the k3 estimate
    (:func:`~llmbook.align.losses.kl_k3`), averaged over items. Each term is never
    negative and its expectation is the token's KL given the prefix, so the sum
    estimates the KL of whole answers without bias."""
    replies = sample_replies(policy, tokenizer, items, n=1, temperature=1.0,
                             max_new_tokens=max_new_tokens, seed=seed)
    seqs = []
    for item, (reply,) in zip(items, replies):
        prompt = render_prompt(tokenizer, item.messages()[:1])
        seqs.append((prompt + reply, [0] * len(prompt) + [1] * len(reply)))
    x, y = collate_sft(seqs, tokenizer.special_tokens[END])
    device = next(policy.parameters()).device
    x, y = x.to(device), y.to(device)
    kl = kl_k3(token_log_probs(policy(x)[0], y), token_log_probs(reference(x)[0], y))
    return float((kl * (y != IGNORE_INDEX)).sum(1).mean())


def _row(items, replies) -> dict:
    scores = [tasks.reward(item, reply) for item, reply in zip(items, replies)]
    return {"answers": list(replies), "scores": scores,
            "estimate": list(bootstrap_ci(scores))}


def measure(profile: Profile) -> dict:
    """Every stage on the held-out items and the validation text (see the module
    docstring), computed once per profile and code, then read from the cache."""
    base, tokenizer, pre = chat_base(profile)
    s = profile.align
    spec = ResultsSpec(StageSpec("all", profile.name, s, pre.path.name))

    def build(out: Path) -> None:
        _, held = task_items(s, tokenizer, base.config.block_size)
        sft, rm = sft_stage(profile), reward_stage(profile)
        dpo, grpo = dpo_stage(profile), grpo_stage(profile)
        options = {"max_new_tokens": s.max_new_tokens}
        rows = {
            "base-ranked": rank_choices(pre.model, pre.tokenizer, held),
            "base": answers(base, tokenizer, held, **options),
            "sft": answers(sft.model, tokenizer, held, **options),
            "best-of-n": best_of_n(sft.model, rm.model, tokenizer, held, n=s.best_of,
                                   temperature=s.temperature, **options),
            "dpo": answers(dpo.model, tokenizer, held, **options),
            "grpo": answers(grpo.model, tokenizer, held, **options),
        }
        _, splits = book_splits(profile)
        batch = 8192 // base.config.block_size
        bpc = {name: evaluate(model, splits["val"], batch_size=batch,
                              max_tokens=s.val_tokens).bits_per_char
               for name, model in (("pretrained", pre.model), ("base", base),
                                   ("sft", sft.model), ("dpo", dpo.model),
                                   ("grpo", grpo.model))}
        kl = {name: kl_to_reference(model, sft.model, tokenizer, held, **options)
              for name, model in (("dpo", dpo.model), ("grpo", grpo.model))}
        result = {"items": [{"prompt": i.prompt, "answer": i.answer} for i in held],
                  "rows": {name: _row(held, replies) for name, replies in rows.items()},
                  "bpc": bpc, "kl": kl,
                  "logs": {"sft": sft.log, "reward": rm.log, "dpo": dpo.log,
                           "grpo": grpo.log}}
        atomic_write_text(out / RESULTS, json.dumps(result))

    path = cached_artifact("align-results", spec, build)
    return json.loads((path / RESULTS).read_text())


def meter_scores(items, replies) -> dict:
    """Replies to meter prompts, scored both ways: the bare and the guarded reward (means
    with bootstrap 95% intervals), the share of first lines of exactly ten syllables, and
    the share that each hacking flag catches (``"any"``: at least one; ``any_flag``: that
    share with its interval)."""
    lines = [meter.first_line(r) for r in replies]
    flags = [meter.hacking_flags(line, copied_from=item.context)
             for item, line in zip(items, lines)]
    flagged = {name: sum(name in found for found in flags) / len(lines)
               for name in sorted({f for found in flags for f in found})}
    flagged["any"] = sum(bool(found) for found in flags) / len(lines)
    return {"lines": lines, "any_flag": list(bootstrap_ci([float(bool(f)) for f in flags])),
            "bare": list(bootstrap_ci([meter.meter_reward(line) for line in lines])),
            "guarded": list(bootstrap_ci([tasks.reward(i, r)
                                          for i, r in zip(items, replies)])),
            "ten": sum(meter.syllable_count(line) == 10 for line in lines) / len(lines),
            "flagged": flagged}


def meter_measure(profile: Profile) -> dict:
    """The reward-hacking runs measured once per profile and code, then read from the
    cache: greedy lines of the base model (with the chat tokens) and of the GRPO policies
    trained on the bare and on the guarded meter reward, for the held-out meter prompts,
    scored by :func:`meter_scores`; and the two runs' training logs."""
    base, tokenizer, pre = chat_base(profile)
    s = profile.align
    spec = ResultsSpec(StageSpec("meter", profile.name, s, pre.path.name))

    def build(out: Path) -> None:
        _, held = meter_items(s, tokenizer, base.config.block_size)
        runs = {reward: meter_stage(profile, reward) for reward in METER_REWARDS}
        models = {"base": base, **{reward: run.model for reward, run in runs.items()}}
        rows = {name: meter_scores(held, answers(model, tokenizer, held,
                                                 max_new_tokens=s.meter_max_new_tokens))
                for name, model in models.items()}
        result = {"prompts": [i.prompt for i in held], "rows": rows,
                  "logs": {reward: run.log for reward, run in runs.items()}}
        atomic_write_text(out / RESULTS, json.dumps(result))

    path = cached_artifact("align-meter-results", spec, build)
    return json.loads((path / RESULTS).read_text())
