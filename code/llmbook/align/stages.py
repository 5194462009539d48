"""The post-training stages of the book's model, each trained once and cached. Chapter 8.

    base (pretrained, Chapter 5) -> SFT -> reward model (on the SFT model)
                                        -> DPO (reference: SFT)
                                        -> GRPO (reference: SFT)

Every stage is the one training loop (:class:`llmbook.train.Trainer`) with a batch
source and an objective from :mod:`llmbook.align.objectives`. A stage's artifact holds
the weights (``model.pt``), the model's config (``model.json``), the chat tokenizer
(``tokenizer.json``) and the per-step records (``log.jsonl``); its key covers the
profile's :class:`~llmbook.profiles.AlignSettings`, the pretrained model it started from
and this code. ``python -m llmbook.chat`` talks to the latest one built.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from llmbook.align import meter, tasks
from llmbook.align.chat import (END, chat_tokenizer, grow_vocabulary, render_conversation,
                                render_prompt)
from llmbook.align.objectives import (DPOObjective, ExampleBatches, GRPOObjective,
                                      GroupRollouts, RewardObjective, collate_preferences,
                                      collate_sft)
from llmbook.align.rewards import RewardModel
from llmbook.artifacts import atomic_write_bytes, atomic_write_text, cached_artifact
from llmbook.model import GPT, GPTConfig
from llmbook.objectives import LanguageModelObjective
from llmbook.profiles import AlignSettings, Profile
from llmbook.tokenizers import io as tokenizer_io
from llmbook.train import TrainConfig, Trainer, pretrained_model

STAGES = ("sft", "reward", "dpo", "grpo")
MODEL, MODEL_CONFIG, TOKENIZER, LOG = ("model.pt", "model.json", "tokenizer.json",
                                       "log.jsonl")


@dataclass(frozen=True)
class StageSpec:
    """The key of a stage's artifact."""

    stage: str
    profile: str
    settings: AlignSettings
    # the directory name (a hash) of the artifact it grows from: the pretrained model for
    # SFT, the SFT stage for the others
    base: str


@dataclass
class Stage:
    """A trained stage: its model (a GPT, or a RewardModel), tokenizer, log and path."""

    model: torch.nn.Module
    tokenizer: object
    log: list[dict]
    path: Path


# -- the starting point and the data -------------------------------------------------------

def chat_base(profile: Profile):
    """The pretrained model grown by the four chat tokens, without dropout (post-training
    is short, and GRPO's ratio needs the same function at sampling and training), and the
    chat tokenizer. Returns ``(model, tokenizer, pretrained)``."""
    pre = pretrained_model(profile)
    config = dataclasses.replace(pre.model.config, dropout=0.0)
    model = GPT(config)
    model.load_state_dict(pre.model.state_dict())
    tokenizer = chat_tokenizer(pre.tokenizer)
    grow_vocabulary(model, tokenizer.n_vocab - config.vocab_size)
    return model.to(pre.model.lm_head.weight.device).eval(), tokenizer, pre


# Encoding is pure Python (Chapter 2) and every stage needs the same items rendered: keep
# them for the life of the process, keyed by the tokenizer's name (its identity).
_RENDERED: dict[tuple, tuple[list[int], list[int]]] = {}
_ITEMS: dict[tuple, tuple[list, list]] = {}


def render(tokenizer, item: tasks.Item, answer: str | None = None):
    """:func:`~llmbook.align.chat.render_conversation` of ``item`` answered with
    ``answer`` (the reference when None), remembered."""
    key = (tokenizer.name, item.prompt, item.answer if answer is None else answer)
    if key not in _RENDERED:
        _RENDERED[key] = render_conversation(tokenizer, item.messages(answer))
    return _RENDERED[key]


def _fitting_items(task: str, tokenizer, block_size: int, max_new_tokens: int,
                   n_train: int, n_test: int):
    """``(train, held_out)`` items of ``task`` whose conversations fit the context with
    any of their candidate answers and with a sampled reply of ``max_new_tokens``:
    ``n_train`` from the training scenes, ``n_test`` from the validation and test scenes
    (no stage selects anything on them, and neither shares a scene with a training
    item)."""
    key = (task, tokenizer.name, block_size, max_new_tokens, n_train, n_test)
    if key in _ITEMS:
        return _ITEMS[key]

    def fitting(split):
        return [i for i in tasks.make_items(task, split)
                if all(len(render(tokenizer, i, answer)[0]) <= block_size
                       for answer in (i.answer, *i.choices))
                and len(render_prompt(tokenizer, i.messages()[:1]))
                + max_new_tokens <= block_size]
    train, held = fitting("train"), fitting("val") + fitting("test")
    for name, items, n in (("train", train, n_train), ("held-out", held, n_test)):
        if n > len(items):
            raise ValueError(f"{task}: {n} {name} items asked for, "
                             f"{len(items)} fit the context; lower the setting")
    _ITEMS[key] = (random.Random(0).sample(train, n_train),
                   random.Random(1).sample(held, n_test))
    return _ITEMS[key]


def task_items(settings: AlignSettings, tokenizer, block_size: int):
    """``(train, held_out)`` items of ``settings.task`` whose conversations fit the
    context with any of their candidate answers (the reward model and DPO read wrong
    ones too) and with a sampled reply of ``max_new_tokens`` (GRPO), ``n_train`` and
    ``n_test`` of them (see :func:`_fitting_items`)."""
    return _fitting_items(settings.task, tokenizer, block_size, settings.max_new_tokens,
                          settings.n_train, settings.n_test)


def meter_items(settings: AlignSettings, tokenizer, block_size: int):
    """``(train, held_out)`` prompts of the meter task ("write the next line, in ten
    syllables") for the reward-hacking runs: ``n_train`` and ``meter_n_test``."""
    return _fitting_items("meter", tokenizer, block_size, settings.meter_max_new_tokens,
                          settings.n_train, settings.meter_n_test)


def preference_pairs(items, tokenizer, seed: int = 0):
    """One pair per item: the right answer (chosen) against a wrong candidate drawn
    from the item's choices (rejected), each as a rendered ``(ids, mask)``."""
    rng = random.Random(seed)
    pairs = []
    for item in items:
        wrong = rng.choice([c for c in item.choices if c != item.answer])
        pairs.append((render(tokenizer, item), render(tokenizer, item, wrong)))
    return pairs


# -- training one stage --------------------------------------------------------------------

def stage_trainer(profile: Profile, model, batches, objective, *, steps: int,
                  lr: float, batch_size: int) -> Trainer:
    """A Trainer for a post-training stage: the profile's optimiser settings with the
    stage's steps, learning rate and batch, a short warm-up, float32, no compilation
    (batches change shape)."""
    settings = dataclasses.replace(
        profile.train, steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=min(5, steps - 1),
        batch_size=batch_size, grad_accum=1, dropout=0.0, eval_interval=steps,
        log_interval=max(1, steps // 20), dtype="float32", compile=False,
        keep_best=False)
    config = TrainConfig(getattr(model, "config", None) or model.gpt.config, settings,
                         seed=profile.seed)
    return Trainer(config, batches, objective=objective, model=model,
                   device=profile.device)


def _save(out: Path, model, tokenizer, records: list[dict]) -> None:
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
    atomic_write_bytes(out / MODEL, buffer.getvalue())
    gpt = model.gpt if isinstance(model, RewardModel) else model
    atomic_write_text(out / MODEL_CONFIG, json.dumps(dataclasses.asdict(gpt.config)))
    tokenizer_io.save(tokenizer, out / TOKENIZER)
    atomic_write_text(out / LOG, "".join(json.dumps(r) + "\n" for r in records))


def load_stage(path: Path | str, device: str = "cpu") -> Stage:
    """Read a stage's artifact directory; a reward model when it holds a scalar head."""
    path = Path(path)
    missing = [n for n in (MODEL, MODEL_CONFIG, TOKENIZER, LOG) if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a post-training stage (missing "
                                f"{', '.join(missing)})")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    state = torch.load(path / MODEL, map_location="cpu", weights_only=True)
    gpt = GPT(GPTConfig(**json.loads((path / MODEL_CONFIG).read_text())))
    model = RewardModel(gpt) if "head.weight" in state else gpt
    model.load_state_dict(state)
    log = [json.loads(line) for line in (path / LOG).read_text().splitlines() if line]
    return Stage(model.to(device).eval(), tokenizer_io.load(path / TOKENIZER), log, path)


def _cached_stage(stage: str, profile: Profile, base: Path, build) -> Stage:
    """The stage's artifact, built by ``build(out)`` when it is not in the cache, loaded.
    Its key: the stage, the profile's align settings and the artifact ``base`` it grows
    from."""
    spec = StageSpec(stage, profile.name, profile.align, base.name)
    return load_stage(cached_artifact(f"align-{stage}", spec, build), profile.device)


def sft_stage(profile: Profile) -> Stage:
    """Supervised fine-tuning on the training items' reference answers: masked
    next-token loss through :class:`~llmbook.objectives.LanguageModelObjective`."""
    model, tokenizer, pre = chat_base(profile)
    s = profile.align

    def build(out: Path) -> None:
        train, _ = task_items(s, tokenizer, model.config.block_size)
        examples = [render(tokenizer, item) for item in train]
        end = tokenizer.special_tokens[END]
        batches = ExampleBatches(examples, s.batch_size,
                                 lambda b: collate_sft(b, end), seed=profile.seed)
        trainer = stage_trainer(profile, model, batches, LanguageModelObjective(),
                                steps=s.sft_steps, lr=s.sft_lr, batch_size=s.batch_size)
        trainer.fit()
        records = [{"step": r["step"], "loss": r["loss"]} for r in trainer.log
                   if "loss" in r]
        _save(out, trainer.model, tokenizer, records)

    return _cached_stage("sft", profile, pre.path, build)


def _pairs_batches(profile: Profile, tokenizer, block_size: int) -> ExampleBatches:
    s = profile.align
    train, _ = task_items(s, tokenizer, block_size)
    end = tokenizer.special_tokens[END]
    return ExampleBatches(preference_pairs(train, tokenizer, seed=profile.seed),
                          s.batch_size, lambda b: collate_preferences(b, end),
                          seed=profile.seed)


def reward_stage(profile: Profile) -> Stage:
    """A reward model (the SFT model with a scalar head) trained with the Bradley-Terry
    loss on (right answer, wrong candidate) pairs of the training items."""
    sft = sft_stage(profile)
    s = profile.align

    def build(out: Path) -> None:
        model = RewardModel(sft.model)
        objective = RewardObjective()
        batches = _pairs_batches(profile, sft.tokenizer, sft.model.config.block_size)
        trainer = stage_trainer(profile, model, batches, objective, steps=s.rm_steps,
                                lr=s.rm_lr, batch_size=s.batch_size)
        trainer.fit()
        _save(out, trainer.model, sft.tokenizer, objective.records)

    return _cached_stage("reward", profile, sft.path, build)


def dpo_stage(profile: Profile, *, average: bool = False) -> Stage:
    """DPO from the SFT model on the same preference pairs, the SFT model frozen as the
    reference. ``average=True`` scores each answer by its mean token log-probability
    instead of the sum (Chapter 8's counter-example), as a separate artifact."""
    sft = sft_stage(profile)
    s = profile.align

    def build(out: Path) -> None:
        policy = load_stage(sft.path, profile.device).model.train()
        objective = DPOObjective(sft.model, beta=s.dpo_beta, average=average)
        batches = _pairs_batches(profile, sft.tokenizer, sft.model.config.block_size)
        trainer = stage_trainer(profile, policy, batches, objective, steps=s.dpo_steps,
                                lr=s.dpo_lr, batch_size=s.batch_size)
        trainer.fit()
        _save(out, trainer.model, sft.tokenizer, objective.records)

    return _cached_stage("dpo-average" if average else "dpo", profile, sft.path, build)


def grpo_stage(profile: Profile) -> Stage:
    """GRPO from the SFT model: groups of sampled answers to training prompts, rewards
    from the task's checker, the clipped objective with a KL penalty to the SFT
    model."""
    sft = sft_stage(profile)
    s = profile.align

    def build(out: Path) -> None:
        train, _ = task_items(s, sft.tokenizer, sft.model.config.block_size)
        _train_grpo(profile, sft.model, sft.tokenizer, train, out,
                    max_new_tokens=s.max_new_tokens)

    return _cached_stage("grpo", profile, sft.path, build)


def _train_grpo(profile: Profile, start, tokenizer, items, out: Path, *,
                max_new_tokens: int, reward=tasks.reward) -> None:
    """GRPO from the model ``start`` (also the KL reference) on ``items``; saves the
    stage."""
    s = profile.align
    policy = copy.deepcopy(start).train()
    batches = GroupRollouts(policy, start, items, tokenizer, prompts=s.grpo_prompts,
                            group=s.grpo_group, temperature=s.temperature,
                            max_new_tokens=max_new_tokens, seed=profile.seed, reward=reward)
    objective = GRPOObjective(epsilon=0.2, kl=s.grpo_kl)
    trainer = stage_trainer(profile, policy, batches, objective, steps=s.grpo_steps,
                            lr=s.grpo_lr, batch_size=s.grpo_prompts * s.grpo_group)
    trainer.fit()
    records = [{"step": i + 1, **r, **o}
               for i, (r, o) in enumerate(zip(batches.records, objective.records))]
    _save(out, trainer.model, tokenizer, records)


# -- reward hacking: GRPO on the meter task -----------------------------------------------

def bare_meter_reward(item: tasks.Item, answer: str) -> float:
    """The meter task's reward without its guard: the syllable count alone
    (:func:`llmbook.align.meter.meter_reward`), which pays for any ten syllables."""
    return meter.meter_reward(answer)


METER_REWARDS = {"bare": bare_meter_reward, "guarded": tasks.reward}


def meter_stage(profile: Profile, reward: str) -> Stage:
    """GRPO on the meter task's training prompts, rewarded by the bare syllable count
    (``reward="bare"``) or by the guarded reward, which pays nothing for a line it flags
    (``"guarded"``); the rest as in :func:`grpo_stage`, with replies of up to
    ``meter_max_new_tokens``. It starts from the base model with the chat tokens, not from
    SFT: SFT was trained to answer with a play's title, whatever the question."""
    if reward not in METER_REWARDS:
        raise ValueError(f"reward must be one of {sorted(METER_REWARDS)}, got {reward!r}")
    base, tokenizer, pre = chat_base(profile)
    s = profile.align

    def build(out: Path) -> None:
        train, _ = meter_items(s, tokenizer, base.config.block_size)
        _train_grpo(profile, base, tokenizer, train, out,
                    max_new_tokens=s.meter_max_new_tokens, reward=METER_REWARDS[reward])

    return _cached_stage(f"meter-{reward}", profile, pre.path, build)


def latest_stage(profile_name: str, stage: str = "grpo") -> Path | None:
    """The most recently built artifact of ``stage`` for the profile, or None."""
    from llmbook.paths import cache_dir

    found = []
    for meta in (cache_dir() / f"align-{stage}").glob("*/config.json"):
        if json.loads(meta.read_text())["config"].get("profile") == profile_name:
            found.append(meta.parent)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
