"""Tests for pipeline parallelism (Chapter 6): GPipe and 1F1B simulated (the bubble
formula, exactly; 1F1B's activation memory), and a two-stage GPT on 2 gloo processes
against the single-process loss and gradients."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from llmbook.parallel import experiments
from llmbook.parallel.dist import spawn
from llmbook.parallel.pipeline import (
    bubble_fraction,
    gpipe_bubble,
    one_f_one_b_order,
    peak_activations,
    simulate,
    timeline,
)

SIZES = [(1, 1), (2, 1), (2, 4), (3, 5), (4, 4), (4, 8), (8, 3), (5, 16)]
RUNS = [("gpipe", 2), ("gpipe", 4), ("1f1b", 4)]


@pytest.mark.parametrize("times", [(1, 1), (1, 2), (2, 3)])
@pytest.mark.parametrize("p, m", SIZES)
def test_gpipe_bubble_is_p_minus_1_over_m_plus_p_minus_1(p, m, times):
    events = simulate("gpipe", p, m, forward_time=times[0], backward_time=times[1])
    assert bubble_fraction(events) == Fraction(p - 1, m + p - 1) == gpipe_bubble(p, m)
    assert peak_activations(events) == [m] * p  # every stage holds every micro-batch
    assert len(events) == 2 * p * m


@pytest.mark.parametrize("p, m", SIZES)
def test_1f1b_has_the_same_bubble_and_holds_at_most_p_minus_s(p, m):
    events = simulate("1f1b", p, m)
    assert bubble_fraction(events) == gpipe_bubble(p, m)
    assert peak_activations(events) == [min(p - s, m) for s in range(p)]


def test_schedules_by_hand():
    assert one_f_one_b_order(2, 3, 0) == [
        ("F", 0),
        ("F", 1),
        ("B", 0),
        ("F", 2),
        ("B", 1),
        ("B", 2),
    ]
    assert one_f_one_b_order(2, 3, 1) == [
        ("F", 0),
        ("B", 0),
        ("F", 1),
        ("B", 1),
        ("F", 2),
        ("B", 2),
    ]
    text = timeline(simulate("gpipe", 2, 2, forward_time=1, backward_time=1))
    # stage 1 starts a step late; stage 0's backwards wait for stage 1's
    assert text.splitlines() == [
        "stage 0: F0 F1 .. .. B1 B0",
        "stage 1: .. F0 F1 B1 B0 ..",
    ]
    with pytest.raises(ValueError, match="unknown schedule"):
        simulate("zigzag", 2, 2)
    with pytest.raises(ValueError, match="outside"):
        one_f_one_b_order(2, 2, 2)


@pytest.fixture(scope="module")
def results():
    return spawn(experiments.pipeline_worker, 2, RUNS, timeout=180)


def reference():
    model = experiments.tiny_gpt(0)
    x, y = experiments.batches(1)[0]
    _, loss = model(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("run", RUNS)
def test_two_stage_pipeline_equals_one_process(results, run):
    loss, grads = reference()
    first, last = results[0][run], results[1][run]
    assert first["loss"] is None
    # the loss is ~4.2, where float32 steps by 4.8e-7: allow a few steps (measured: 2)
    torch.testing.assert_close(last["loss"], loss, rtol=1e-6, atol=0)
    # each parameter lives on one stage, the tied embedding/head on both
    assert set(first["grads"]) | set(last["grads"]) == set(grads)
    assert set(first["grads"]) & set(last["grads"]) == {"tok_emb.weight"}
    for result in (first, last):
        for name, grad in result["grads"].items():
            # 1e-6: micro-batch gradients added one by one instead of in one matmul
            torch.testing.assert_close(
                grad, grads[name], rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
            )
    schedule, m = run
    expected_peak = peak_activations(simulate(schedule, 2, m))
    assert [first["peak"], last["peak"]] == expected_peak
