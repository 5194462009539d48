"""Step speed, eager and compiled, and MFU (llmbook.train.speed, Chapter 6)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch._dynamo
import torch._inductor.config
from llmbook import costs
from llmbook.model import GPTConfig
from llmbook.profiles import get_profile
from llmbook.train import TrainConfig
from llmbook.train import loop
from llmbook.train import speed

TINY = GPTConfig.preset("book-cpu", vocab_size=64, n_layer=1, d_model=32, n_head=2,
                        block_size=16, dropout=0.0)


def tiny_run(**settings) -> TrainConfig:
    run = TrainConfig.for_profile(get_profile("cpu"), vocab_size=64, batch_size=4,
                                  **settings)
    return dataclasses.replace(run, model=TINY)


def test_random_tokens_are_windows_and_repeat_with_the_seed():
    a, b = speed.RandomTokens(64, 16, 4, seed=3), speed.RandomTokens(64, 16, 4, seed=3)
    (x1, y1), (x2, y2) = a.next_batch(), b.next_batch()
    assert x1.shape == y1.shape == (4, 16) and torch.equal(x1[:, 1:], y1[:, :-1])
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(a.next_batch()[0], x1)  # the stream moves on
    assert 0 <= int(x1.min()) and int(x1.max()) < 64
    with pytest.raises(ValueError, match="positive"):
        speed.RandomTokens(64, 0, 4)


def test_step_speed_counts_the_run_s_steps_and_tokens(monkeypatch):
    steps_taken = []
    train_step = loop.Trainer.train_step

    def counted(self):
        steps_taken.append(self.step)
        return train_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", counted)
    fp32, bf16 = speed.time_steps([tiny_run(), tiny_run(dtype="bfloat16")], device="cpu",
                                  steps=3, warmup=2)
    # each run: its first step and 2 of warm-up; then 3 rounds of one step each, in turn
    assert steps_taken == [0, 1, 2] * 2 + [3, 3, 4, 4, 5, 5]
    assert (fp32["dtype"], bf16["dtype"]) == ("float32", "bfloat16")
    for r in (fp32, bf16):
        assert r["compile"] is False and r["mfu"] is None
        assert r["first_s"] > 0 and r["step_s"] > 0
        assert r["tokens_per_s"] == pytest.approx(4 * 16 / r["step_s"])


def test_mfu_is_model_flops_over_the_device_peak(monkeypatch):
    monkeypatch.setattr(loop, "peak_flops", lambda device, dtype: 1e12)
    r, = speed.time_steps([tiny_run()], device="cpu", steps=2, warmup=0)
    assert r["mfu"] == pytest.approx(r["tokens_per_s"] * costs.flops_per_token(TINY) / 1e12)


def test_compiled_runs_start_cold_and_put_the_settings_back(monkeypatch):
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    with speed._cold_compiler(True):
        # a compilation here can read nothing compiled before, on disk or in memory
        assert torch._inductor.config.force_disable_caches is True and resets == [1]
    assert torch._inductor.config.force_disable_caches is False and resets == [1, 1]
    with speed._cold_compiler(False):
        assert torch._inductor.config.force_disable_caches is False
    assert resets == [1, 1]  # an eager run leaves compiled code alone


def test_speeds_are_measured_once_per_variant_then_read(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path))
    calls = []

    def fake(runs, *, device, steps, warmup):
        calls.extend((r.settings.dtype, r.settings.compile, steps, warmup) for r in runs)
        return [{"dtype": r.settings.dtype, "compile": r.settings.compile,
                 "step_s": 0.5 if r.settings.compile else 1.0} for r in runs]

    monkeypatch.setattr(speed, "time_steps", fake)
    variants = (("float32", False), ("float32", True))
    first = speed.step_speeds(tiny_run(), device="cpu", steps=4, variants=variants)
    assert calls == [("float32", False, 4, 2), ("float32", True, 4, 2)]
    assert [r["step_s"] for r in first] == [1.0, 0.5]
    again = speed.step_speeds(tiny_run(), device="cpu", steps=4, variants=variants)
    assert again == first and len(calls) == 2  # read from the cache
    speed.step_speeds(tiny_run(), device="cpu", steps=5, variants=variants)
    assert len(calls) == 4  # other step counts: another measurement
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    speed.step_speeds(tiny_run(), device="cpu", steps=5, variants=variants)
    assert len(calls) == 6  # other CPU threads: another measurement
    other = tiny_run(lr=1e-2)
    measured = speed.cached_time_steps([tiny_run(), other], device="cpu", steps=5)
    assert len(calls) == 8 and len(measured) == 2  # other runs: another measurement
    assert speed.cached_time_steps([tiny_run(), other], device="cpu", steps=5) == measured
    speed.cached_time_steps([other, tiny_run()], device="cpu", steps=5)
    assert len(calls) == 10  # the same runs in another order are measured in that order


@pytest.mark.parametrize("variants", [(), (("float16", False),)])
def test_unknown_variants_are_refused(variants):
    with pytest.raises(ValueError, match="variants"):
        speed.step_speeds(tiny_run(), device="cpu", steps=2, variants=variants)


def test_bad_step_counts_and_runs_are_refused():
    with pytest.raises(ValueError, match="steps"):
        speed.time_steps([tiny_run()], device="cpu", steps=0)
    with pytest.raises(TypeError, match="TrainConfig"):
        speed.time_steps([], device="cpu", steps=2)
    with pytest.raises(TypeError, match="TrainConfig"):
        speed.cached_time_steps([tiny_run().model], device="cpu", steps=2)
