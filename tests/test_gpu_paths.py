"""The gpu edition's code paths, run on the CPU at small shapes before any GPU sees them
(issue 13): the gpu profile's training settings together (bf16 autocast in training and
evaluation, torch.compile, fused AdamW, keep-best, dropout), its model preset shrunk, the
larger vocabulary, device placement, and the predicted cost of the whole gpu book."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from llmbook import data
from llmbook.costs import flops_per_token
from llmbook.model import GPT, GPTConfig
from llmbook.planner import gpu_book_costs, gpu_book_plan, gpu_plan_markdown, main
from llmbook.profiles import PROFILES
from llmbook.train import TokenSplit, TrainConfig, Trainer, evaluate
from llmbook.train.runtime import to_device

GPU = PROFILES["gpu"]
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\n\n" * 60


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict[str, TokenSplit]:
    folder = tmp_path_factory.mktemp("bytes")
    out = {}
    for name, text in (("train", TEXT), ("val", TEXT[::-1])):
        ids = np.frombuffer(text.encode(), dtype=np.uint8)
        data.write_token_file(folder / f"{name}.bin", ids, vocab_size=256, tokenizer="bytes")
        out[name] = TokenSplit(data.TokenFile(folder / f"{name}.bin"), len(text), name)
    return out


def tiny_gpu_run(**settings) -> TrainConfig:
    """The gpu profile's settings and preset, at a size a CPU trains in a second: the
    book-gpu shape (RMSNorm, RoPE, SwiGLU, tied head, dropout) with fewer, narrower layers."""
    train = dataclasses.replace(GPU.train, **{
        "steps": 6, "batch_size": 4, "warmup_steps": 1, "eval_interval": 2,
        "eval_tokens": 256, "log_interval": 2, **settings})
    model = GPTConfig.preset(GPU.model.preset, vocab_size=256, block_size=32, n_layer=2,
                             n_head=2, d_model=32, dropout=train.dropout)
    return TrainConfig(model, train, seed=GPU.seed, data="bytes")


def test_the_gpu_settings_train_together_on_a_cpu(splits):
    config = tiny_gpu_run()
    s = config.settings
    # everything the gpu profile switches on is on in this run
    assert (s.dtype, s.compile, s.optimizer, s.keep_best) == ("bfloat16", True, "fused", True)
    assert config.model.dropout == GPU.train.dropout > 0
    trainer = Trainer.for_text(config, splits["train"], splits["val"],
                               compile_options={"backend": "eager"})  # inductor: minutes
    assert trainer.autocast_dtype == torch.bfloat16 and trainer.forward is not trainer.model
    assert trainer.optimizer.defaults.get("fused") is True  # torch.optim.AdamW(fused=True)
    log = trainer.fit()
    losses = [r["loss"] for r in log if r["kind"] == "train"]
    assert all(math.isfinite(x) for x in losses)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    evals = [r for r in log if r["kind"] == "eval"]
    assert len(evals) == s.steps // s.eval_interval
    best = min(evals, key=lambda r: r["val_loss"])
    assert trainer.best["step"] == best["step"]
    assert not any(k.startswith("_orig_mod") for k in trainer.best["model"])
    trainer.use_best()
    again = trainer.evaluate(splits["val"], s.eval_tokens).nats_per_token
    assert again == pytest.approx(best["val_loss"])  # same weights, same autocast scoring


def test_bfloat16_evaluation_is_close_to_float32(splits):
    torch.manual_seed(0)
    model = GPT(tiny_gpu_run(dropout=0.0).model).eval()
    full = evaluate(model, splits["val"], batch_size=4, max_tokens=512)
    half = evaluate(model, splits["val"], batch_size=4, max_tokens=512,
                    autocast_dtype=torch.bfloat16)
    assert half.tokens == full.tokens
    assert half.nats_per_token != full.nats_per_token  # autocast did run in bfloat16
    # bf16 keeps 8 bits of mantissa (relative error 2^-9 per product); over a 2-layer
    # model the mean loss moves by far less than 1%.
    assert half.nats_per_token == pytest.approx(full.nats_per_token, rel=1e-2)


def test_the_book_gpu_preset_with_the_gpu_vocabulary_trains_a_step():
    V = GPU.tokenizer.vocab_size  # 8192: more than uint8 and Chapter 1's byte files
    config = TrainConfig.for_profile(GPU, vocab_size=V, steps=2, warmup_steps=1,
                                     compile=False)
    assert config.model == GPTConfig.preset("book-gpu", vocab_size=V, dropout=0.2)
    assert config.tokens_per_step == GPU.train.batch_size * 512
    small = dataclasses.replace(config.model, n_layer=1, block_size=16)
    torch.manual_seed(0)
    model = GPT(small)
    idx = torch.randint(0, V, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    assert logits.shape == (2, 16, V) and math.isfinite(loss.item())
    loss.backward()
    assert model.tok_emb.weight.grad.shape == (V, small.d_model)


def test_a_token_file_holds_the_gpu_vocabulary(tmp_path):
    V = GPU.tokenizer.vocab_size
    ids = np.array([0, 255, 256, V - 1], dtype=np.int64)
    data.write_token_file(tmp_path / "t.bin", ids, vocab_size=V, tokenizer="bpe")
    tokens = data.TokenFile(tmp_path / "t.bin")
    assert tokens.vocab_size == V and tokens.ids.tolist() == ids.tolist()


def test_every_model_the_gpu_chapters_build_is_valid():
    # gpu_book_costs builds each chapter's GPTConfig from the profile (Chapter 5's small
    # overfitting model once had a width that book-gpu's 6 heads do not divide)
    runs = gpu_book_costs()
    assert [r.chapter for r in runs] == sorted(r.chapter for r in runs)
    d = GPU.train_demos
    small = dataclasses.replace(GPTConfig.preset("book-gpu", vocab_size=8192),
                                n_layer=d.overfit_layers, d_model=d.overfit_width)
    with torch.device("meta"):
        GPT(small)


def test_to_device_moves_nested_batches_and_leaves_the_rest():
    x, y = torch.arange(6).view(2, 3), torch.ones(2)
    batch = {"ids": x, "pair": (x, [y, "label"]), "n": 3}
    moved = to_device(batch, torch.device("cpu"))
    assert set(moved) == {"ids", "pair", "n"} and moved["n"] == 3
    assert isinstance(moved["pair"], tuple) and isinstance(moved["pair"][1], list)
    assert torch.equal(moved["ids"], x) and moved["pair"][1][1] == "label"
    assert torch.equal(moved["pair"][1][0], y)
    meta = to_device((x, {"y": y}), torch.device("meta"))  # a real move, no CUDA needed
    assert meta[0].device.type == "meta" and meta[1]["y"].device.type == "meta"
    if torch.cuda.is_available():  # the pinned-memory branch, where it can run
        on_gpu = to_device({"ids": x}, torch.device("cuda"))
        assert torch.equal(on_gpu["ids"].cpu(), x)


def test_the_run_cost_is_the_token_count_times_the_flops_per_token():
    (book,) = [r for r in gpu_book_costs() if r.run == "the book's model"]
    t = GPU.train
    config = GPTConfig.preset("book-gpu", vocab_size=GPU.tokenizer.vocab_size)
    assert book.tokens == t.steps * t.batch_size * t.grad_accum * config.block_size
    train = book.tokens * flops_per_token(config)
    assert train < book.flops < 1.1 * train  # evaluation: forward passes only, a few %


def test_the_gpu_book_fits_an_hour_and_80_gb_on_one_h100():
    rows = gpu_book_plan()
    assert sum(r["seconds"] for r in rows) < 3600
    assert max(r["peak_GB"] for r in rows) < 80
    assert all(r["seconds"] > 0 and r["peak_GB"] > 0 for r in rows)
    # the estimate scales as it must: half the utilisation, twice the time
    from llmbook.planner import Cluster

    slow = gpu_book_plan(cluster=Cluster(n_gpus=1, gpus_per_node=1, mfu=0.2))
    assert slow[0]["seconds"] == pytest.approx(2 * rows[0]["seconds"])


def test_how_to_run_shows_the_predicted_table(capsys):
    page = Path(__file__).resolve().parents[1] / "book" / "how_to_run.md"
    shown = re.search(r"<!-- gpu-plan:start -->\n(.*?)<!-- gpu-plan:end -->",
                      page.read_text(encoding="utf-8"), re.S)
    assert shown, "book/how_to_run.md lost its gpu-plan markers"
    main(["--gpu-plan"])
    printed = capsys.readouterr().out
    assert printed == gpu_plan_markdown() == shown.group(1), (
        "the table in book/how_to_run.md is stale: paste the output of "
        "python -m llmbook.planner --gpu-plan between its markers")
