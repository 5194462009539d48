"""Mixed precision: the loss scaler from scratch against torch.amp.GradScaler, and the
range/precision examples (llmbook.precision, Chapter 6)."""

import math

import pytest
import torch
import torch.nn as nn

from llmbook.precision import (DynamicLossScaler, overflow_example, precision_example,
                               scaled_step)


def test_overflow_in_float16_not_bfloat16():
    values = overflow_example(70000.0)
    assert values["float16"] == math.inf
    assert math.isfinite(values["bfloat16"]) and abs(values["bfloat16"] - 70000) < 512
    assert values["float32"] == 70000.0


def test_bfloat16_loses_one_plus_two_to_minus_eight():
    values = precision_example(2.0**-8)
    assert values["bfloat16"] == 1.0
    assert values["float16"] == 1.0 + 2.0**-8 == values["float32"]


def _run(scaler, overflow_steps, n_steps=12):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    scales, params = [], []
    for step in range(n_steps):
        factor = math.inf if step in overflow_steps else 1.0  # an injected overflow

        def loss_fn(factor=factor):
            return ((model(x) - y) ** 2).mean() * factor
        scaled_step(loss_fn, optimizer, scaler)
        scales.append(float(scaler.get_scale()))
        params.append([p.detach().clone() for p in model.parameters()])
    return scales, params


def test_scaler_matches_torch_grad_scaler_step_by_step():
    settings = dict(init_scale=2.0**10, growth_factor=2.0, backoff_factor=0.5,
                    growth_interval=3)
    overflow = {2, 3, 8}
    ours = _run(DynamicLossScaler(**settings), overflow)
    theirs = _run(torch.amp.GradScaler("cpu", **settings), overflow)
    assert ours[0] == theirs[0]
    # by hand: start 1024; step 0, 1 fine; 2, 3 overflow (halve twice); 4, 5, 6 fine ->
    # grow at the third; 7 fine; 8 overflow; 9, 10, 11 fine -> grow
    assert ours[0] == [1024, 1024, 512, 256, 256, 256, 512, 512, 256, 256, 256, 512]
    for ours_step, theirs_step in zip(ours[1], theirs[1]):
        for a, b in zip(ours_step, theirs_step):
            assert torch.equal(a, b)
    # a skipped step leaves the parameters as they were
    for a, b in zip(ours[1][1], ours[1][3]):
        assert torch.equal(a, b)


def test_scaler_rejects_bad_settings_and_double_unscale():
    with pytest.raises(ValueError, match="backoff_factor"):
        DynamicLossScaler(backoff_factor=2.0)
    with pytest.raises(ValueError, match="growth_interval"):
        DynamicLossScaler(growth_interval=0)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler()
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    scaler.unscale_(optimizer)
    with pytest.raises(RuntimeError, match="already"):
        scaler.unscale_(optimizer)


def test_scaling_rescues_float16_gradients():
    # A gradient of 1e-8 is below float16's smallest subnormal (6e-8): it flushes to
    # zero unless the loss is scaled first.
    g = torch.tensor(1e-8)
    assert g.half().item() == 0.0
    rescued = (g * 2.0**16).half().float().item() / 2.0**16
    assert rescued == pytest.approx(1e-8, rel=1e-3)
