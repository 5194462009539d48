"""Tests for the post-training stages (llmbook.align.objectives, sampling, stages) and the
chat command line, on a tiny model."""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch
import torch.nn as nn
from llmbook import chat as chat_cli
from llmbook.align import chat, objectives, stages
from llmbook.align.sampling import sample_replies
from llmbook.align.tasks import Item
from llmbook.model import GPT, GPTConfig
from llmbook.objectives import IGNORE_INDEX, LanguageModelObjective
from llmbook.profiles import PROFILES
from llmbook.tokenizers import ENDOFTEXT, train_bpe
from llmbook.tokenizers.tokenizer import BPEConfig
from llmbook.train import TrainConfig, Trainer

TEXT = ["MACBETH:\nIf it were done when 'tis done, then 'twere well\n"
        "It were done quickly. Which play is this from? Hamlet, Macbeth\n"] * 3
ITEMS = [Item("play", f"p/{i}", f"Which play is this from? (Hamlet, Macbeth)\n{line}",
              answer, ("Hamlet", "Macbeth"))
         for i, (line, answer) in enumerate([("If it were done", "Macbeth"),
                                             ("To be or not", "Hamlet"),
                                             ("when 'tis done", "Macbeth"),
                                             ("It were done quickly", "Hamlet")])]


@pytest.fixture(scope="module")
def tokenizer():
    return chat.chat_tokenizer(train_bpe(TEXT, BPEConfig(300, "gpt4", (ENDOFTEXT,)),
                                         name="tiny"))


def tiny_gpt(tokenizer) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig.preset("book-cpu", vocab_size=tokenizer.n_vocab, block_size=64,
                              n_layer=1, n_head=2, d_model=32)
    return GPT(config)


class ListBatches:
    """The given micro-batches, in order."""

    def __init__(self, batches):
        self.batches, self.i = list(batches), 0

    def next_batch(self):
        self.i += 1
        return self.batches[self.i - 1]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def one_step(model, micro_batches, lr=1e-3):
    """Parameters after one Trainer step over ``micro_batches`` (grad_accum of them)."""
    settings = PROFILES["cpu"].train.__class__(**{
        **PROFILES["cpu"].train.__dict__, "steps": 2, "lr": lr, "min_lr": lr,
        "warmup_steps": 0, "grad_accum": len(micro_batches), "optimizer": "torch"})
    trainer = Trainer(TrainConfig(model.config, settings), ListBatches(micro_batches),
                      objective=LanguageModelObjective(), model=copy.deepcopy(model))
    loss, _ = trainer.train_step()
    return dict(trainer.model.named_parameters()), loss


def sft_examples(tokenizer):
    # answers of different lengths: micro-batches hold different numbers of targets
    return [chat.render_conversation(tokenizer, item.messages(answer))
            for item, answer in zip(ITEMS, ["Macbeth", "Hamlet, surely", "Macbeth",
                                            "It is Hamlet, the Dane"])]


def test_sft_step_does_not_depend_on_the_micro_batch_split(tokenizer):
    model, examples = tiny_gpt(tokenizer), sft_examples(tokenizer)
    end = tokenizer.special_tokens[chat.END]
    whole, _ = one_step(model, [objectives.collate_sft(examples, end)])
    for split in ([examples[:1], examples[1:]], [[e] for e in examples]):
        parts, _ = one_step(model, [objectives.collate_sft(p, end) for p in split])
        for name, value in whole.items():
            torch.testing.assert_close(parts[name], value, atol=1e-6, rtol=0)
    # and the step did change the weights (lr 1e-3, Adam: about 1e-3 per weight)
    before = dict(model.named_parameters())
    assert (whole["tok_emb.weight"] - before["tok_emb.weight"]).abs().max() > 1e-4


def test_sft_targets_are_the_assistant_tokens_only(tokenizer):
    examples = sft_examples(tokenizer)
    x, y = objectives.collate_sft(examples, tokenizer.special_tokens[chat.END])
    for row, (ids, mask) in zip(y.tolist(), examples):
        trained = [t for t in row if t != IGNORE_INDEX]
        assert trained == [t for t, m in zip(ids[1:], mask[1:]) if m]
        assert trained[-1] == tokenizer.special_tokens[chat.END]


def test_a_micro_batch_with_nothing_to_train_changes_nothing(tokenizer):
    model, examples = tiny_gpt(tokenizer), sft_examples(tokenizer)
    end = tokenizer.special_tokens[chat.END]
    prompt_only = [(ids, [0] * len(ids)) for ids, _ in examples[:2]]
    empty = objectives.collate_sft(prompt_only, end)
    assert (empty[1] == IGNORE_INDEX).all()
    after, loss = one_step(model, [empty])
    assert torch.isfinite(loss) and float(loss) == 0.0
    for name, value in model.named_parameters():
        assert torch.equal(after[name], value), name
    full = objectives.collate_sft(examples, end)
    with_empty, loss = one_step(model, [empty, full])
    alone, _ = one_step(model, [full])
    assert torch.isfinite(loss)
    for name, value in alone.items():
        torch.testing.assert_close(with_empty[name], value, atol=1e-6, rtol=0)


class TableModel(nn.Module):
    """logits[b, t] = table[x[b, t]]: log-probabilities a test can compute by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(torch.tensor(table))

    def forward(self, x):
        return self.table[x], None


def hand_logprob(table, prev, target):
    row = table[prev]
    return row[target] - math.log(sum(math.exp(v) for v in row))


def test_dpo_objective_equals_the_formula_on_hand_computed_logprobs():
    policy_table = [[0.0, 1.0, -1.0], [2.0, 0.0, 0.5], [0.3, -0.2, 1.5]]
    ref_table = [[0.5, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, -1.0]]
    # one pair: chosen 0 -> 1 -> 2 (both targets trained), rejected 0 -> 2 -> 2 with only
    # the last target trained
    batch = {"chosen_x": torch.tensor([[0, 1]]), "chosen_y": torch.tensor([[1, 2]]),
             "rejected_x": torch.tensor([[0, 2]]),
             "rejected_y": torch.tensor([[IGNORE_INDEX, 2]])}
    beta = 0.5
    objective = objectives.DPOObjective(TableModel(ref_table), beta=beta)
    loss, _ = objective(TableModel(policy_table), batch)

    def seq(table, pairs):
        return sum(hand_logprob(table, a, b) for a, b in pairs)

    pc, rc = seq(policy_table, [(0, 1), (1, 2)]), seq(ref_table, [(0, 1), (1, 2)])
    pr, rr = seq(policy_table, [(2, 2)]), seq(ref_table, [(2, 2)])
    margin = beta * ((pc - rc) - (pr - rr))
    expected = -math.log(1 / (1 + math.exp(-margin)))
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-6)
    record = objective.records[-1]
    assert record["chosen_logp"] == pytest.approx(pc, abs=1e-6)
    assert record["rejected_logp"] == pytest.approx(pr, abs=1e-6)
    assert record["margin"] == pytest.approx(margin, abs=1e-6)
    assert objective.count(batch) == 1
    assert (record["positions"], record["context"]) == (4, 2)  # 2 answers x 2 positions


def test_training_flops_count_each_pass_at_its_context():
    from llmbook.costs import flops_per_token

    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, d_model=32)
    records = [{"positions": 40, "context": 10}, {"positions": 24, "context": 8}]
    expected = sum(n * (flops_per_token(config, t) + 3 * flops_per_token(config, t,
                                                                           training=False))
                   for n, t in ((40, 10), (24, 8)))
    assert objectives.training_flops(config, records, 3) == expected
    # a training pass is a forward and a backward: three forwards' worth
    assert objectives.training_flops(config, records[:1], 0) == pytest.approx(
        3 * objectives.training_flops(config, records[:1], 1) / 4)


def test_reward_objective_is_bradley_terry(tokenizer):
    from llmbook.align.rewards import RewardModel
    model = RewardModel(tiny_gpt(tokenizer))
    pairs = stages.preference_pairs(ITEMS, tokenizer)
    batch = objectives.collate_preferences(pairs, tokenizer.special_tokens[chat.END])
    loss, _ = objectives.RewardObjective()(model, batch)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)  # zero head: equal scores
    for (_, (rejected, _)), row in zip(pairs, batch["rejected"]):
        assert row[: len(rejected)].tolist() == rejected


def test_group_rollouts_and_grpo_objective(tokenizer):
    policy = tiny_gpt(tokenizer)
    rollouts = objectives.GroupRollouts(policy, copy.deepcopy(policy), ITEMS, tokenizer,
                                        prompts=2, group=3, temperature=1.0,
                                        max_new_tokens=4, seed=0)
    batch = rollouts.next_batch()
    assert batch["x"].shape[0] == 6 and batch["advantages"].shape == (6,)
    record = rollouts.records[-1]
    assert 0 <= record["constant_groups"] <= 2
    assert (record["positions"], record["context"]) == (batch["x"].numel(),
                                                        batch["x"].shape[1])
    # an untrained model never names a play: every group is constant, advantages 0
    assert record["constant_groups"] == 2 and not batch["advantages"].any()
    objective = objectives.GRPOObjective(kl=0.0)
    loss, _ = objective(policy, batch)
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in policy.parameters())
    assert objective.records[-1]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == ref
    # the same seed gives the same rollouts
    again = objectives.GroupRollouts(policy, copy.deepcopy(policy), ITEMS, tokenizer,
                                     prompts=2, group=3, temperature=1.0,
                                     max_new_tokens=4, seed=0).next_batch()
    assert torch.equal(again["x"], batch["x"])


def test_group_rollouts_take_the_reward_they_are_given(tokenizer):
    """The reward-hacking runs swap the task's checker for another reward: the rollouts
    must score with it (here: one point per reply character, so groups differ)."""
    policy = tiny_gpt(tokenizer)
    seen = []

    def length_reward(item, answer):
        seen.append((item.prompt, answer))
        return float(len(answer))

    rollouts = objectives.GroupRollouts(policy, copy.deepcopy(policy), ITEMS, tokenizer,
                                        prompts=2, group=4, temperature=1.0,
                                        max_new_tokens=6, seed=0, reward=length_reward)
    batch = rollouts.next_batch()
    assert len(seen) == 8
    assert rollouts.records[-1]["reward"] == pytest.approx(
        sum(len(answer) for _, answer in seen) / 8)
    assert batch["advantages"].any()  # replies of different lengths: a gradient


def test_meter_rewards_bare_and_guarded():
    prompt_line = "He jests at scars that never felt a wound."
    item = Item("meter", "s/0", f"Write the next line, in ten syllables.\nx\n{prompt_line}",
                "", context=("x", prompt_line))
    assert stages.bare_meter_reward(item, prompt_line) == 1.0  # copying pays, bare
    assert stages.METER_REWARDS["guarded"](item, prompt_line) == 0.0  # but not guarded
    verse = "But soft, what light through yonder window breaks?"
    assert stages.bare_meter_reward(item, verse) == stages.METER_REWARDS["guarded"](item, verse)
    with pytest.raises(ValueError, match="reward must be one of"):
        stages.meter_stage(PROFILES["cpu"], "lenient")


def test_meter_scores_report_both_rewards_and_the_flags():
    from llmbook.align import results

    prompt_line = "He jests at scars that never felt a wound."
    items = [Item("meter", f"s/{i}", "Write the next line, in ten syllables.", "",
                  context=("x", prompt_line)) for i in range(2)]
    replies = [prompt_line, "and the and the and the and the and the"]
    scores = results.meter_scores(items, replies)
    assert scores["bare"][0] == 1.0 and scores["guarded"][0] == 0.0
    assert scores["ten"] == 1.0
    assert scores["flagged"] == {"copied": 0.5, "monosyllables": 0.5, "repeated word": 0.5,
                                 "any": 1.0}


def test_sample_replies_end_with_end_token(tokenizer):
    model = tiny_gpt(tokenizer)
    replies = sample_replies(model, tokenizer, ITEMS, n=2, temperature=1.0,
                             max_new_tokens=5)
    end = tokenizer.special_tokens[chat.END]
    for group in replies:
        assert len(group) == 2
        for r in group:
            assert 1 <= len(r) <= 5 and (end not in r[:-1])


def _built_stage(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path))
    out = tmp_path / "align-grpo" / "abc"
    out.mkdir(parents=True)
    stages._save(out, tiny_gpt(tokenizer), tokenizer, [{"step": 1}])
    (out / "config.json").write_text(json.dumps({"config": {"profile": "cpu"}}))
    return out


def test_chat_cli_talks_with_the_template(tmp_path, tokenizer, monkeypatch):
    path = _built_stage(tmp_path, tokenizer, monkeypatch)
    stdout = io.StringIO()
    rc = chat_cli.main(["--profile", "cpu", "--max-new-tokens", "4", "--temperature",
                        "0"], stdin=io.StringIO("Who speaks?\nAnd then?\n\n"),
                       stdout=stdout)
    lines = stdout.getvalue().splitlines()
    assert rc == 0 and path.name in lines[0]
    assert sum(line.count("model> ") for line in lines) == 2
    stage = stages.load_stage(path)
    generator = torch.Generator().manual_seed(0)
    expected = chat_cli.reply(stage.model, tokenizer,
                              [{"role": "user", "content": "Who speaks?"}],
                              max_new_tokens=4, temperature=0, top_k=None, top_p=None,
                              generator=generator)
    assert f"model> {expected}" in stdout.getvalue()


def test_chat_cli_says_when_no_model_was_built(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path))
    assert chat_cli.main(["--profile", "cpu"], stdin=io.StringIO("")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no grpo model has been built" in err


def test_rank_choices_picks_the_likeliest_candidate(tokenizer):
    from llmbook.align.sampling import rank_choices
    model = tiny_gpt(tokenizer).eval()
    item = ITEMS[0]
    picks = rank_choices(model, tokenizer, [item])
    # by hand: the summed log-probability of each candidate's tokens after the prompt
    head = tokenizer.encode(f"{item.prompt}\nAnswer:")
    scores = {}
    for choice in item.choices:
        ids = tokenizer.encode(f"{item.prompt}\nAnswer: {choice}")
        assert ids[: len(head)] == head  # the tokenizer splits before " Macbeth"
        x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
        y[0, : len(head) - 1] = IGNORE_INDEX
        scores[choice] = float(objectives.response_logprobs(model, x, y)[0])
    assert picks == [max(scores, key=scores.get)]
    with pytest.raises(ValueError, match="no choices"):
        rank_choices(model, tokenizer, [Item("finish", "p/0", "Finish", "it")])
