"""Chapter 3's cached trainings (llmbook.attention_lm)."""

from __future__ import annotations

import pytest
import torch
from llmbook import attention_lm as alm
from llmbook.attention import AttentionOnlyLM


@pytest.fixture
def tiny_bytes(tmp_path, monkeypatch):
    """A private cache, and splits of repeating text instead of the plays."""
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path))
    text = {"train": b"to be or not to be, that is the question. " * 60,
            "val": b"whether 'tis nobler in the mind to suffer. " * 20}
    monkeypatch.setattr(alm, "byte_ids",
                        lambda split: torch.tensor(list(text[split]), dtype=torch.int64))


def test_one_head_loss_with_the_division_is_the_model_s_own_forward():
    torch.manual_seed(0)
    model = AttentionOnlyLM(256, 16, 32, 1)
    x, y = torch.randint(0, 256, (3, 16)), torch.randint(0, 256, (3, 16))
    loss, sharpest = alm.one_head_loss(model, x, y, divide=True)
    torch.testing.assert_close(loss, model(x, y)[1])
    raw_loss, raw_sharpest = alm.one_head_loss(model, x, y, divide=False)
    assert not torch.isclose(raw_loss, loss)
    assert 0 < sharpest < raw_sharpest <= 1  # without the division the softmax is sharper


def test_attention_lm_is_trained_once_and_its_log_matches_its_weights(tiny_bytes,
                                                                       monkeypatch):
    run = alm.AttentionLMRun(block_size=16, d_model=16, n_heads=2, batch_size=4, lr=3e-3,
                             steps=12, seed=5, checks=3)
    threads = torch.get_num_threads()
    lm, log = alm.train_attention_lm(run)
    assert torch.get_num_threads() == threads  # the one-thread training puts it back
    assert [step for step, _ in log] == [0, 4, 8, 12]
    assert log[-1][1] < log[0][1]  # it learned something
    # the cached weights are the ones the last check scored
    assert alm.window_loss(lm, alm.byte_ids("val"), 16) == pytest.approx(log[-1][1],
                                                                          abs=1e-6)
    monkeypatch.setattr(alm, "random_windows", lambda *a: pytest.fail("retrained"))
    monkeypatch.setattr(alm, "window_loss", lambda *a, **k: pytest.fail("retrained"))
    again, again_log = alm.train_attention_lm(run)
    assert again_log == log
    for name, value in lm.state_dict().items():
        assert torch.equal(again.state_dict()[name], value)


def test_scale_runs_share_their_start_and_differ_only_by_the_division(tiny_bytes):
    run = alm.ScaleRun(d_k=64, block_size=16, batch_size=4, lr=3e-3, steps=8, seed=2,
                       checks=2)
    logs = alm.scale_training(run)
    assert [r[0] for r in logs[True]] == [r[0] for r in logs[False]] == [0, 4, 8]
    (_, loss_scaled, sharp_scaled), (_, loss_raw, sharp_raw) = logs[True][0], logs[False][0]
    # the same initial weights: unscaled scores are sqrt(64) = 8 times larger, so sharper
    assert sharp_raw > sharp_scaled and loss_raw != loss_scaled
    assert alm.scale_training(run) == logs  # read from the cache


def test_bad_step_counts_are_refused():
    with pytest.raises(ValueError, match="checks"):
        alm.train_attention_lm(alm.AttentionLMRun(16, 16, 2, 4, 1e-3, steps=2, seed=0,
                                                  checks=3))
    with pytest.raises(ValueError, match="checks"):
        alm.scale_training(alm.ScaleRun(64, 16, 4, 1e-3, steps=5, seed=0, checks=0))
