"""Chapter 4's pre- versus post-norm sweep as a cached artifact (llmbook.norm_sweep)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from llmbook import norm_sweep as ns
from llmbook.model import GPT, GPTConfig

TINY = GPTConfig.preset("book-cpu", vocab_size=64, n_layer=2, d_model=32, n_head=2,
                        block_size=16)


def ids(n: int = 4000) -> torch.Tensor:
    return torch.from_numpy(np.tile(np.arange(64), n // 64 + 1)[:n].astype(np.int64))


def test_batches_repeat_with_the_seed():
    a = list(ns.random_batches(ids(), 16, 4, 3, seed=5))
    b = list(ns.random_batches(ids(), 16, 4, 3, seed=5))
    assert len(a) == 3 and all(torch.equal(x1, x2) and torch.equal(y1, y2)
                               for (x1, y1), (x2, y2) in zip(a, b))
    x, y = a[0]
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_warm_up_is_linear_then_constant(monkeypatch):
    seen = []
    step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    torch.manual_seed(0)
    losses = ns.train_briefly(GPT(TINY), ns.random_batches(ids(), 16, 4, 6, seed=1), 1e-3,
                              warmup=4)
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert seen == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_sweep_is_the_plain_loop_and_comes_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path))
    torch.set_num_threads(1)
    kw = dict(lrs=(1e-3, 1e-2), warmup=4, steps=12, batch_size=4, seed=3)
    runs = ns.norm_sweep(TINY, ids(), **kw)
    assert set(runs.final) == {(p, lr, w) for p in ("pre", "post") for lr in kw["lrs"]
                               for w in (0, 4)}
    # one run by hand: the same seed, batches and loop give the same final loss
    torch.manual_seed(3)
    model = GPT(dataclasses.replace(TINY, norm_position="post"))
    losses = ns.train_briefly(model, ns.random_batches(ids(), 16, 4, 12, seed=3), 1e-3, 4)
    assert runs.final["post", 1e-3, 4] == pytest.approx(float(np.mean(losses[-10:])))
    # the kept model is pre-norm at the highest rate, without warm-up
    torch.manual_seed(3)
    kept = GPT(TINY)
    ns.train_briefly(kept, ns.random_batches(ids(), 16, 4, 12, seed=3), 1e-2)
    for name, value in kept.state_dict().items():
        torch.testing.assert_close(runs.model.state_dict()[name], value)
    monkeypatch.setattr(ns, "train_briefly", lambda *a, **k: pytest.fail("retrained"))
    again = ns.norm_sweep(TINY, ids(), **kw)
    assert again.path == runs.path and again.final == runs.final


@pytest.mark.parametrize("kw, match", [
    (dict(lrs=()), "learning rates"), (dict(lrs=(0.0, 1e-3)), "learning rates"),
    (dict(warmup=0), "warmup"), (dict(warmup=20), "warmup"), (dict(steps=5, warmup=2), "steps"),
])
def test_bad_settings_are_refused(kw, match):
    args = dict(lrs=(1e-3,), warmup=4, steps=12, batch_size=4, seed=0) | kw
    with pytest.raises(ValueError, match=match):
        ns.norm_sweep(TINY, ids(), **args)
