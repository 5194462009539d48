"""Tests for llmbook.train (Chapter 5): the objective, batches, evaluation, the loop,
checkpoints, the cached model, the baselines and the command line. Tiny models on a small
synthetic corpus keep each test quick."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from llmbook import batches, data, measure, train
from llmbook.batches import eval_windows, gather_windows
from llmbook.model import GPTConfig
from llmbook.ngram import char_ngram_bits_per_char
from llmbook.objectives import LanguageModelObjective
from llmbook.objectives import bits_per_char
from llmbook.profiles import PROFILES
from llmbook.train import CheckpointError, TokenSplit, TrainConfig, Trainer, evaluate
from llmbook.train.__main__ import main as train_main
from llmbook.train.checkpoint import CHECKPOINT_VERSION

TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nO Romeo, Romeo, wherefore art "
        "thou Romeo?\n\n")
MODEL = GPTConfig(vocab_size=256, block_size=16, n_layer=2, n_head=2, d_model=32, dropout=0.0,
                  norm="rmsnorm", activation="swiglu", pos_encoding="rope", bias=False)
SETTINGS = dataclasses.replace(
    PROFILES["cpu"].train, steps=12, batch_size=4, grad_accum=1, lr=1e-2, min_lr=1e-3, warmup_steps=2,
    eval_interval=4, eval_tokens=128, log_interval=2, dropout=0.0, keep_best=False, optimizer="fused",
)
TIMING_FIELDS = ("tokens_per_s", "mfu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and stay fast when other processes load the
    machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_split(path: Path, text: str, name: str) -> TokenSplit:
    ids = np.frombuffer(text.encode(), dtype=np.uint8)
    data.write_token_file(path / f"{name}.bin", ids, vocab_size=256, tokenizer="bytes")
    return TokenSplit(data.TokenFile(path / f"{name}.bin"), len(text), name)


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict[str, TokenSplit]:
    folder = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    lines = TEXT.split("\n")
    # Training text: the speeches again and again; held-out text: the same lines shuffled.
    return {"train": make_split(folder, TEXT * 40, "train"),
            "val": make_split(folder, "\n".join(rng.permutation(lines * 3)), "val"),
            "test": make_split(folder, "\n".join(rng.permutation(lines * 2)), "test")}


def make_config(**settings) -> TrainConfig:
    model_fields = {k: settings.pop(k) for k in list(settings) if k in GPTConfig.__dataclass_fields__}
    return TrainConfig(dataclasses.replace(MODEL, **model_fields), dataclasses.replace(SETTINGS, **settings),
                       seed=7, data="synthetic")


def without_timings(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k not in TIMING_FIELDS} for record in log]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


# ------------------------------------------------------------------------------------------------------------
# The objective


# ------------------------------------------------------------------------------------------------------------
# Batches and evaluation


def test_gather_windows_equals_token_windows(splits):
    tokens = splits["train"].tokens
    windows = batches.TokenWindows(tokens, 16, stride=1)
    starts = np.array([0, 5, 999, len(windows) - 1])
    x, y = gather_windows(tokens.ids, starts, 16)
    for row, start in enumerate(starts):
        wx, wy = windows[int(start)]
        assert torch.equal(x[row], wx) and torch.equal(y[row], wy)


def test_batch_stream_resumes_exactly(splits):
    stream = batches.BatchStream(splits["train"].tokens, 16, 4, seed=3)
    for _ in range(5):
        stream.next_batch()
    state = stream.state_dict()
    expected = [stream.next_batch() for _ in range(3)]
    resumed = batches.BatchStream(splits["train"].tokens, 16, 4, seed=3)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, (resumed.next_batch() for _ in range(3))):
        assert torch.equal(x, rx) and torch.equal(y, ry)


@pytest.mark.parametrize("n_tokens, block", [(17, 16), (18, 16), (100, 16), (97, 8), (65, 8), (1000, 37)])
def test_eval_windows_score_every_target_exactly_once(n_tokens, block):
    starts, skips = eval_windows(n_tokens, block)
    scored = Counter()
    for start, skip in zip(starts, skips):
        assert 0 <= start and start + block + 1 <= n_tokens
        scored.update(range(start + 1 + skip, start + block + 1))  # target positions of this window
    assert scored == Counter(range(1, n_tokens))


def test_eval_windows_rejects_short_stream():
    with pytest.raises(ValueError, match="too few"):
        eval_windows(10, 16)


def test_evaluate_counts_every_token_and_converts_to_bits_per_char(splits):
    trainer = Trainer.for_text(make_config(), splits["train"], splits["val"])
    model = trainer.model
    with torch.no_grad():  # a model whose logits are all zero predicts the uniform distribution: ln V per token
        model.tok_emb.weight.zero_()
    model.train()
    val = splits["val"]
    result = evaluate(model, val, batch_size=3)
    assert model.training  # restored
    assert result.complete and result.tokens == len(val.tokens) - 1
    assert result.nats_per_token == pytest.approx(math.log(256))
    assert result.bits_per_char == pytest.approx(bits_per_char(math.log(256) * (len(val.tokens) - 1), val.n_chars))
    partial = evaluate(model, val, batch_size=3, max_tokens=64)
    assert not partial.complete and partial.tokens <= 64 and partial.nats_per_token == pytest.approx(math.log(256))


def test_evaluate_agrees_with_the_model_loss_on_whole_windows(splits):
    """On a stream of exactly k windows plus one token, evaluation is the mean of the model's
    own losses."""
    trainer = Trainer.for_text(make_config(), splits["train"], splits["val"])
    ids = splits["val"].tokens.ids[: 3 * 16 + 1]
    x = torch.from_numpy(np.stack([ids[i * 16 : i * 16 + 16] for i in range(3)]).astype(np.int64))
    y = torch.from_numpy(np.stack([ids[i * 16 + 1 : i * 16 + 17] for i in range(3)]).astype(np.int64))
    trainer.model.eval()
    with torch.no_grad():
        expected = float(trainer.model(x, y)[1])
    folder = splits["val"].tokens.path.parent
    small = make_split(folder, bytes(ids).decode(), "val-small")
    assert evaluate(trainer.model, small, batch_size=2).nats_per_token == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------------------------
# The loop


def test_training_learns_the_text(splits):
    """A model that learned nothing from the context scores at best the unigram entropy of the
    text (3.19 nats per byte here). After 120 steps on the repeated speeches the last logged
    loss was 1.37 on an AMD EPYC (2.2-2.4 after 60 steps, too close to any bound to hold on
    every CPU), so 0.7 of the unigram entropy (2.24) leaves a margin of 0.8 nats."""
    trainer = Trainer.for_text(make_config(steps=120, lr=3e-2, warmup_steps=5, eval_interval=120),
                               splits["train"], splits["val"])
    log = trainer.fit()
    train_records = [r for r in log if r["kind"] == "train"]
    counts = np.bincount(np.frombuffer(TEXT.encode(), dtype=np.uint8))
    probs = counts[counts > 0] / counts.sum()
    unigram_nats = float(-(probs * np.log(probs)).sum())  # the best loss without any context
    assert train_records[0]["loss"] > 4.0  # near ln 256 = 5.5 at the start
    assert train_records[-1]["loss"] < 0.7 * unigram_nats  # it has learned to use the context
    evals = [r for r in log if r["kind"] == "eval"]
    assert len(evals) == 1 and evals[0]["step"] == 120
    assert evals[0]["train_bpc"] < unigram_nats / math.log(2)  # 2.05 measured against 4.61


def test_log_records_and_schedule(splits, tmp_path):
    trainer = Trainer.for_text(make_config(), splits["train"], splits["val"], log_path=tmp_path / "log.jsonl")
    log = trainer.fit()
    assert [r["step"] for r in log if r["kind"] == "train"] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in log if r["kind"] == "eval"] == [4, 8, 12]
    assert [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()] == log
    record = log[0]
    assert record["tokens"] == 2 * 4 * 16 and record["tokens_per_s"] > 0 and record["mfu"] is None
    assert record["lr"] == pytest.approx(trainer.schedule(1))  # the lr of the record's (last) step
    assert set(trainer.timings) == {"train", "eval", "checkpoint", "log"}


def test_mfu_uses_the_model_flops_and_the_peak(splits):
    trainer = Trainer.for_text(make_config(steps=2, warmup_steps=1, log_interval=2), splits["train"], splits["val"])
    trainer.peak_flops = 1e12  # as if on a GPU we know
    record = trainer.fit()[0]
    assert record["mfu"] == pytest.approx(record["tokens_per_s"] * trainer.flops_per_token / 1e12)


def test_training_is_deterministic(splits):
    config = make_config(dropout=0.1, steps=6)
    a, b = (Trainer.for_text(config, splits["train"], splits["val"]) for _ in range(2))
    torch.manual_seed(123)  # the global RNG state before a run must not matter ...
    log_a = a.fit()
    outside = torch.get_rng_state()
    log_b = b.fit()
    assert torch.equal(torch.get_rng_state(), outside)  # ... and a run leaves it alone
    assert_same_weights(a.model, b.model)
    assert without_timings(log_a) == without_timings(log_b)


def test_gradient_accumulation_equals_one_large_batch(splits):
    """Two micro-batches of 2 sequences accumulate the gradient of one batch of the same 4
    sequences."""
    big = Trainer.for_text(make_config(batch_size=4, grad_accum=1, steps=3, optimizer="ours"), splits["train"], splits["val"])
    small = Trainer.for_text(make_config(batch_size=2, grad_accum=2, steps=3, optimizer="ours"), splits["train"],
                    splits["val"])
    # Feed both the same sequences: the accumulating trainer reads the big trainer's batches in two halves.
    batches = [big.batches.next_batch() for _ in range(3)]
    big_iter, small_iter = iter(batches), iter(half for x, y in batches for half in ((x[:2], y[:2]), (x[2:], y[2:])))
    big.batches.next_batch = lambda: next(big_iter)
    small.batches.next_batch = lambda: next(small_iter)
    for _ in range(3):
        big.train_step()
        small.train_step()
    for p, q in zip(big.model.parameters(), small.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-5)  # summation order differs, Adam divides


def test_bfloat16_autocast_path_on_cpu(splits):
    trainer = Trainer.for_text(make_config(dtype="bfloat16", steps=4, eval_interval=4), splits["train"], splits["val"])
    log = trainer.fit()
    assert all(math.isfinite(r["loss"]) for r in log if r["kind"] == "train")
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # autocast keeps float32 weights


def test_compiled_model_trains_and_checkpoints_plain_weights(splits, tmp_path):
    trainer = Trainer.for_text(make_config(compile=True, steps=2, warmup_steps=1), splits["train"], splits["val"],
                      compile_options={"backend": "eager"})  # the inductor backend needs minutes on a CPU
    assert trainer.forward is not trainer.model
    trainer.fit(checkpoint_path=tmp_path / "ckpt.pt")
    state = train.load_checkpoint(tmp_path / "ckpt.pt")
    assert not any(key.startswith("_orig_mod") for key in state["model"])


def test_keep_best_selects_the_lowest_validation_loss(splits):
    trainer = Trainer.for_text(make_config(keep_best=True), splits["train"], splits["val"])
    log = trainer.fit()
    evals = [r for r in log if r["kind"] == "eval"]
    best = min(evals, key=lambda r: r["val_loss"])
    assert trainer.best["step"] == best["step"] and trainer.best["val_loss"] == best["val_loss"]
    trainer.use_best()
    assert trainer.evaluate(splits["val"], SETTINGS.eval_tokens).nats_per_token == pytest.approx(best["val_loss"])


def test_diverging_run_is_a_clear_error(splits):
    trainer = Trainer.for_text(make_config(steps=2, warmup_steps=1, log_interval=2), splits["train"], splits["val"])
    with torch.no_grad():
        trainer.model.tok_emb.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="diverged"):
        trainer.fit()


def test_trainer_rejects_bad_setups(splits):
    with pytest.raises(ValueError, match="vocabulary"):
        Trainer.for_text(make_config(vocab_size=100), splits["train"], splits["val"])
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer.for_text(SETTINGS, splits["train"], splits["val"])
    with pytest.raises(ValueError, match="until"):
        Trainer.for_text(make_config(), splits["train"], splits["val"]).fit(until=SETTINGS.steps + 1)
    with pytest.raises(ValueError, match="device"):
        Trainer.for_text(make_config(), splits["train"], splits["val"], device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no GPU"):
            Trainer.for_text(make_config(), splits["train"], splits["val"], device="cuda")


def test_train_settings_validation():
    with pytest.raises(ValueError, match="warmup_steps"):
        dataclasses.replace(SETTINGS, warmup_steps=SETTINGS.steps)
    with pytest.raises(ValueError, match="dtype"):
        dataclasses.replace(SETTINGS, dtype="float16")
    with pytest.raises(ValueError, match="optimizer"):
        dataclasses.replace(SETTINGS, optimizer="sgd")
    with pytest.raises(ValueError, match="min_lr"):
        dataclasses.replace(SETTINGS, min_lr=1.0)
    demos = PROFILES["cpu"].train_demos
    with pytest.raises(ValueError, match="overfit_dropout"):
        dataclasses.replace(demos, overfit_dropout=1.0)
    with pytest.raises(ValueError, match="positive"):
        dataclasses.replace(demos, sample_tokens=0)
    for factors in [(0.5, 2.0), (2.0, 1.0, 4.0), (0.0, 1.0, 2.0), (0.5, 0.7, 2.0)]:
        with pytest.raises(ValueError, match="lr_sweep_factors"):
            dataclasses.replace(demos, lr_sweep_factors=factors)


def test_learning_rate_sweep_scales_the_schedule_with_the_rate(monkeypatch):
    """Each run: the profile's peak and floor times the factor, its warm-up shortened in
    proportion to the run, everything else the book model's."""
    from llmbook.train import book

    calls = []
    monkeypatch.setattr(book, "pretrained_model",
                        lambda profile, progress=False, **settings: calls.append(settings)
                        or settings["lr"])
    profile = PROFILES["cpu"]
    s, d = profile.train, profile.train_demos
    runs = book.learning_rate_sweep(profile)
    assert list(runs) == list(d.lr_sweep_factors)
    assert [c["lr"] for c in calls] == pytest.approx([s.lr * f for f in d.lr_sweep_factors])
    assert [c["min_lr"] / c["lr"] for c in calls] == pytest.approx(
        [s.min_lr / s.lr] * len(calls))
    assert {c["steps"] for c in calls} == {d.lr_sweep_steps}
    assert {c["warmup_steps"] for c in calls} == {
        round(s.warmup_steps * d.lr_sweep_steps / s.steps)}
    assert set(calls[0]) == {"steps", "lr", "min_lr", "warmup_steps"}


def test_profiles_describe_the_book_runs():
    from llmbook.costs import flops_per_token

    cpu = TrainConfig.for_profile(PROFILES["cpu"], vocab_size=2048)
    gpu = TrainConfig.for_profile(PROFILES["gpu"], vocab_size=8192, steps=10, warmup_steps=1)
    assert cpu.settings.dtype == "float32" and not cpu.settings.compile
    assert gpu.settings.dtype == "bfloat16" and gpu.settings.compile
    assert gpu.model.dropout == PROFILES["gpu"].train.dropout and gpu.settings.steps == 10
    assert 8e6 < flops_per_token(gpu.model) / 6 < 2e7  # ~10M parameters in matrix multiplies
    assert measure.peak_flops(torch.device("cpu"), "bfloat16") is None
    assert measure.PEAK_FLOPS["H100"]["bfloat16"] == 989e12
    with pytest.raises(TypeError, match="resolved once"):
        TrainConfig.for_profile("cpu", vocab_size=2048)


# ------------------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("optimizer", ["fused", "ours"])
def test_resume_continues_bit_for_bit(splits, tmp_path, optimizer):
    """N steps straight equal N/2 steps, a checkpoint, a fresh trainer resuming, and N/2 more
    steps."""
    config = make_config(dropout=0.1, grad_accum=2, optimizer=optimizer, log_interval=3, eval_interval=5)
    straight = Trainer.for_text(config, splits["train"], splits["val"])
    straight.fit()

    first = Trainer.for_text(config, splits["train"], splits["val"], log_path=tmp_path / "log.jsonl")
    first.fit(until=7, checkpoint_path=tmp_path / "ckpt.pt")  # mid-interval: pending losses are saved too
    first.train_step()  # progress after the checkpoint is lost, as in a crash
    del first
    torch.manual_seed(999)  # a different RNG state; resuming must restore the saved one
    second = Trainer.for_text(config, splits["train"], splits["val"], log_path=tmp_path / "log.jsonl")
    second.resume(tmp_path / "ckpt.pt")
    assert second.step == 7
    second.fit()

    assert_same_weights(straight.model, second.model)
    for a, b in zip(straight.optimizer.state.values(), second.optimizer.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert without_timings(straight.log) == without_timings(second.log)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert without_timings(logged) == without_timings(straight.log)


def test_checkpoint_holds_the_run_state(splits, tmp_path):
    trainer = Trainer.for_text(make_config(), splits["train"], splits["val"])
    trainer.fit(until=4, checkpoint_path=tmp_path / "ckpt.pt", checkpoint_interval=2)
    state = train.load_checkpoint(tmp_path / "ckpt.pt")
    assert {"model", "optimizer", "schedule", "data", "rng", "step", "config", "log"} <= set(state)
    assert state["step"] == 4 and state["data"]["windows"] == 4 * SETTINGS.batch_size
    assert state["schedule"]["total_steps"] == SETTINGS.steps
    assert not list(tmp_path.glob(".ckpt.pt.*"))  # no temporary files left behind


def test_corrupt_or_foreign_checkpoints_are_clear_errors(splits, tmp_path):
    trainer = Trainer.for_text(make_config(), splits["train"], splits["val"])
    trainer.fit(until=2, checkpoint_path=tmp_path / "ckpt.pt")
    raw = (tmp_path / "ckpt.pt").read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x01  # one bit inside the tensor data: torch.load alone would not notice
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    (tmp_path / "future.pt").write_bytes(raw.replace(f"llmbook-checkpoint {CHECKPOINT_VERSION} ".encode(), b"llmbook-checkpoint 99 ", 1))
    fresh = Trainer.for_text(make_config(), splits["train"], splits["val"])
    for name, match in [("flipped.pt", "corrupt or truncated"), ("truncated.pt", "corrupt or truncated"),
                        ("garbage.pt", "not an llmbook training checkpoint"),
                        ("other.pt", "not an llmbook training checkpoint"), ("missing.pt", "no checkpoint"),
                        ("future.pt", "version 99")]:
        with pytest.raises(CheckpointError, match=match):
            fresh.resume(tmp_path / name)
    different = Trainer.for_text(make_config(lr=5e-3, d_model=64), splits["train"], splits["val"])
    with pytest.raises(CheckpointError, match=r"different run .*model.d_model: 32 in the checkpoint, 64 here.*"
                                              r"settings.lr"):
        different.resume(tmp_path / "ckpt.pt")
    fresh.resume(tmp_path / "ckpt.pt")  # the intact file still loads
    assert fresh.step == 2


# ------------------------------------------------------------------------------------------------------------
# The cached pretrained model


def test_pretrained_artifact_is_built_once_and_reloads(splits, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path))
    config = make_config(keep_best=True)
    spec = train.PretrainSpec(config, "bytes", "synthetic-val", config.tokens_per_step)
    first = train.cached_pretrained(spec, splits, batches.ByteTokenizer())
    assert {p.name for p in first.path.iterdir()} >= {"model.pt", "log.jsonl", "summary.json", "run.json", "config.json"}
    assert first.summary["steps"] == SETTINGS.steps and first.summary["val_tokens"] == len(splits["val"].tokens) - 1
    assert first.summary["val_bpc"] == pytest.approx(
        evaluate(first.model, splits["val"], batch_size=4).bits_per_char)
    assert first.log and first.config == spec.run and not first.model.training

    monkeypatch.setattr(train.Trainer, "fit", lambda *a, **k: pytest.fail("a cached model must not retrain"))
    second = train.cached_pretrained(spec, splits, batches.ByteTokenizer())
    assert second.path == first.path and second.log == first.log
    assert_same_weights(first.model, second.model)


# ------------------------------------------------------------------------------------------------------------
# Baselines


def naive_ngram_bits(train_text: str, eval_text: str, order: int, alpha: float) -> float:
    alphabet = set(train_text) | set(eval_text)
    bits = 0.0
    for i, ch in enumerate(eval_text):
        n = min(order, i + 1)
        history = eval_text[i - n + 1 : i]
        grams = Counter(train_text[j : j + n] for j in range(len(train_text) - n + 1))
        contexts = Counter(train_text[j : j + n - 1] for j in range(len(train_text) - n + 1))
        p = (grams[history + ch] + alpha) / (contexts[history] + alpha * len(alphabet))
        bits -= math.log2(p)
    return bits / len(eval_text)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_char_ngram_baseline_matches_a_direct_count(order):
    train_text, eval_text = TEXT * 3, "Romeo, what light? Zounds!\n"
    ours = char_ngram_bits_per_char(train_text, eval_text, order, alpha=0.5)
    assert ours == pytest.approx(naive_ngram_bits(train_text, eval_text, order, 0.5), rel=1e-10)


def test_char_ngram_baseline_sanity():
    assert char_ngram_bits_per_char("abcd" * 100, "dcba" * 5, 1) == pytest.approx(2.0, abs=1e-2)  # uniform
    assert char_ngram_bits_per_char("ab" * 200, "ab" * 20, 2, alpha=1e-3) < 0.05  # fully predictable
    with pytest.raises(ValueError, match="order"):
        char_ngram_bits_per_char("ab", "ab", 0)
    with pytest.raises(ValueError, match="alpha"):
        char_ngram_bits_per_char("ab", "ab", 1, alpha=0)


# ------------------------------------------------------------------------------------------------------------
# The command line


def test_command_line_run_resume_and_errors(tmp_path, capsys):
    args = ["--profile", "cpu", "--tokenizer", "bytes", "--out", str(tmp_path / "run"), "--no-progress",
            "--set", "steps=3", "warmup_steps=1", "batch_size=2", "eval_interval=3", "eval_tokens=64",
            "--model", "n_layer=1", "d_model=32", "block_size=16"]
    assert train_main(args + ["--checkpoint-interval", "1"]) == 0
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2  # at the last step: train, eval
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["val_bpc"] > 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    with pytest.raises(SystemExit, match="--resume"):
        train_main(args)
    assert train_main(args + ["--resume"]) == 0  # already finished: resuming changes nothing
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["val_bpc"] == summary["val_bpc"]
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        train_main(["--profile", "cpu", "--out", str(tmp_path / "x"), "--set", "nonsense=1"])
    with pytest.raises(SystemExit, match="cannot read"):
        train_main(["--profile", "cpu", "--out", str(tmp_path / "x"), "--set", "steps=many"])


def test_module_runs_as_a_program():
    result = subprocess.run([sys.executable, "-m", "llmbook.train", "--help"], capture_output=True, text=True,
                            check=True)
    assert "--profile" in result.stdout and "Chapter 5" in result.stdout


# ------------------------------------------------------------------------------------------------------------
# The seam: batch sources, objectives, weighting, wrapping, identity


class FixedBatches:
    """A batch source that serves the given batches in turn (and resumes by position)."""

    def __init__(self, batches):
        self.batches, self.position = list(batches), 0

    def next_batch(self):
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        return batch

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def masked_batch(splits, rows: int, keep: list[int], offset: int = 0):
    """``rows`` windows of the training text with only the first ``keep[i]`` targets of row i
    scored (the rest -100), as supervised fine-tuning masks prompts."""
    ids = splits["train"].tokens.ids
    x, y = gather_windows(ids, np.arange(rows) * 7 + offset, 16)
    y = y.clone()
    for row, k in enumerate(keep):
        y[row, k:] = -100
    return x, y


def grads_at_step(trainer):
    """Run one step and return the gradients the optimizer saw (after clipping)."""
    seen = {}
    step = trainer.optimizer.step

    def record(*args, **kwargs):
        seen.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
        return step(*args, **kwargs)

    trainer.optimizer.step = record
    trainer.train_step()
    return seen


def test_micro_batches_of_uneven_length_give_the_whole_batch_gradient(splits):
    a = masked_batch(splits, 2, [3, 2])  # 5 scored tokens
    b = masked_batch(splits, 2, [16, 14], offset=100)  # 30 scored tokens
    whole = (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
    # lr 1e-3: Adam moves a weight by about lr whatever its gradient, so the 1e-6 bound on
    # the weights is a bound on the gradients' rounding at that scale
    config = make_config(grad_clip=0.0, optimizer="ours", steps=2, warmup_steps=1, lr=1e-3, min_lr=1e-4)
    one = Trainer(config, FixedBatches([whole]))
    split = Trainer(dataclasses.replace(config, settings=dataclasses.replace(
        config.settings, grad_accum=2, batch_size=2)), FixedBatches([a, b]))
    g_one, g_split = grads_at_step(one), grads_at_step(split)
    for name in g_one:
        torch.testing.assert_close(g_split[name], g_one[name], rtol=1e-5, atol=1e-7)
    for p, q in zip(one.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    # The pitfall the weighting avoids: the mean of the two micro-batch means is another
    # gradient, which over-weights the 5 tokens of the first micro-batch six-fold.
    model = one.model
    mean_of_means = sum(LanguageModelObjective()(model, batch)[0] for batch in (a, b)) / 2
    (g_naive,) = torch.autograd.grad(mean_of_means, model.tok_emb.weight)
    whole_loss = LanguageModelObjective()(model, whole)[0]
    (g_whole,) = torch.autograd.grad(whole_loss, model.tok_emb.weight)
    assert not torch.allclose(g_naive, g_whole, rtol=1e-3, atol=1e-6)


def test_a_micro_batch_with_nothing_to_train_changes_nothing(splits):
    a = masked_batch(splits, 2, [9, 4])
    empty = masked_batch(splits, 2, [0, 0], offset=50)
    config = make_config(optimizer="ours", steps=3, warmup_steps=1)
    alone = Trainer(config, FixedBatches([a]))
    with_empty = Trainer(dataclasses.replace(config, settings=dataclasses.replace(
        config.settings, grad_accum=2)), FixedBatches([a, empty]))
    for _ in range(3):
        loss_alone, _ = alone.train_step()
        loss_with_empty, norm = with_empty.train_step()
        assert torch.isfinite(loss_with_empty) and torch.isfinite(norm)
        assert float(loss_with_empty) == float(loss_alone)
    assert_same_weights(alone.model, with_empty.model)
    nothing = Trainer(config, FixedBatches([empty]))
    before = {k: v.clone() for k, v in nothing.model.state_dict().items()}
    loss, norm = nothing.train_step()  # a whole step with nothing to learn from
    assert float(loss) == 0.0 and float(norm) == 0.0
    assert all(torch.equal(before[k], v) for k, v in nothing.model.state_dict().items())


def test_the_wrap_hook_is_what_training_calls(splits):
    calls = []

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            calls.append(1)
            return self.inner(*args, **kwargs)

    trainer = Trainer.for_text(make_config(steps=2, warmup_steps=1, grad_accum=3),
                               splits["train"], splits["val"], wrap=Wrapper)
    assert isinstance(trainer.forward, Wrapper) and trainer.forward.inner is trainer.model
    trainer.train_step()
    assert len(calls) == 3  # every micro-batch, through the wrapper
    assert not any(k.startswith("inner.") for k in trainer.state_dict()["model"])


def test_run_identity_leaves_out_the_device_and_includes_the_global_batch(splits, tmp_path):
    config = make_config()
    identity = config.identity(world_size=1)
    assert "device" not in json.dumps(identity)
    assert identity["global_batch_tokens"] == config.tokens_per_step
    assert config.identity(world_size=4)["global_batch_tokens"] == 4 * config.tokens_per_step
    # how the global batch is cut is not part of the run: 2 x 2 x 1 is 1 x 2 x 2 is 4 x 1
    assert config.identity(world_size=2) == make_config(batch_size=2).identity(world_size=4) \
        == make_config(batch_size=2, grad_accum=4).identity(world_size=1)
    trainer = Trainer.for_text(config, splits["train"], splits["val"])
    trainer.fit(until=1, checkpoint_path=tmp_path / "ckpt.pt")
    other = Trainer.for_text(config, splits["train"], splits["val"], rank=0, world_size=2)
    with pytest.raises(CheckpointError, match="global_batch_tokens"):
        other.resume(tmp_path / "ckpt.pt")


def test_a_checkpoint_resumes_under_another_cut_of_the_same_global_batch(splits, tmp_path):
    """Micro-batches of 4 for 3 steps, then micro-batches of 2 with 2 accumulation steps:
    the same windows at every step, so the same run as 6 steps of either (within float
    rounding: the two cuts sum the gradient in a different order)."""
    straight = Trainer.for_text(make_config(), splits["train"], splits["val"])
    straight.fit(until=6)
    first = Trainer.for_text(make_config(), splits["train"], splits["val"])
    first.fit(until=3, checkpoint_path=tmp_path / "ckpt.pt")
    second = Trainer.for_text(make_config(batch_size=2, grad_accum=2), splits["train"],
                              splits["val"])
    second.resume(tmp_path / "ckpt.pt")
    second.fit(until=6)
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], value, rtol=0, atol=1e-5)
    def losses(log: list[dict]) -> list[float]:
        return [r[k] for r in log for k in ("loss", "val_loss") if k in r]

    assert np.allclose(losses(second.log), losses(straight.log), atol=1e-5)


def test_the_model_cache_key_follows_the_code_that_builds_it(monkeypatch):
    from llmbook import artifacts

    modules = {m.__name__ for m in artifacts.code_modules("llmbook.train.pretrained")}
    # what decides the weights: the loop, the model, the optimizer, the data order
    assert {"llmbook.train.loop", "llmbook.model", "llmbook.optim", "llmbook.batches",
            "llmbook.objectives", "llmbook.data"} <= modules
    # what does not: the command line, the n-gram baselines, the chapters' table helper
    assert not modules & {"llmbook.train.__main__", "llmbook.ngram", "llmbook.report"}

    def key():
        mods = artifacts.code_modules("llmbook.train.pretrained")
        return artifacts.artifact_key("pretrained", make_config(), mods)

    before = key()
    real = artifacts.inspect.getsource

    def edited(target):
        def getsource(module):
            text = real(module)
            return text + "\n# edited\n" if module.__name__ == target else text
        return getsource

    monkeypatch.setattr(artifacts.inspect, "getsource", edited("llmbook.batches"))
    assert key() != before  # a change to the window sampler trains a new model
    monkeypatch.setattr(artifacts.inspect, "getsource", edited("llmbook.report"))
    assert key() == before  # a change to a chapter helper does not


def test_command_line_run_killed_and_resumed_equals_an_uninterrupted_run(tmp_path):
    import os
    import signal
    import time

    args = ["--profile", "cpu", "--tokenizer", "bytes", "--no-progress", "--set", "steps=60",
            "warmup_steps=5", "batch_size=4", "eval_interval=20", "eval_tokens=256",
            "log_interval=10", "dropout=0.1", "--model", "n_layer=2", "d_model=32",
            "block_size=32", "dropout=0.1", "--checkpoint-interval", "5"]
    command = [sys.executable, "-m", "llmbook.train"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(command + args + ["--out", str(tmp_path / "straight")], check=True,
                   env=env, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(command + args + ["--out", str(killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists()  # it died mid-run
    subprocess.run(command + args + ["--out", str(killed), "--resume"], check=True, env=env,
                   capture_output=True)

    def read(folder):
        log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        summary = json.loads((folder / "summary.json").read_text())
        summary.pop("seconds")
        return without_timings(log), summary

    assert read(killed) == read(tmp_path / "straight")


def test_reading_a_modules_imports_imports_nothing_outside_llmbook():
    # Looking up ``from tqdm.auto import tqdm`` as a possible submodule used to import
    # tqdm.auto, whose warning then printed in five chapters; only llmbook's names count.
    import subprocess
    import sys

    code = ("import sys; from llmbook.artifacts import _imports_in_source\n"
            "src = 'from xml.dom.minidom import parseString\\nimport llmbook.model\\n'"
            "'from llmbook import batches\\nfrom . import optim\\n'\n"
            "found = _imports_in_source('llmbook', src)\n"
            "print(sorted(found), 'xml.dom.minidom' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "['llmbook.batches', 'llmbook.model', 'llmbook.optim'] False"
