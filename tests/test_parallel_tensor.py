"""Tests for tensor parallelism (Chapter 6): column/row-parallel layers, MLPs (plain and
gated) and attention split over 2 gloo processes, from scratch and with torch's
parallelize_module, against the single-process block: outputs, input gradients and each
rank's shard of the weight gradients."""

from __future__ import annotations

import pytest
import torch
from llmbook.parallel import experiments
from llmbook.parallel.dist import spawn
from llmbook.parallel.tensor import shard_parts

WORLD = 2


@pytest.fixture(scope="module")
def results():
    return spawn(experiments.tensor_parallel_worker, WORLD, timeout=180)


def reference(case: str):
    module, rotary = experiments.tp_case(case)
    x, dy = experiments.tp_inputs()
    x.requires_grad_()
    y = module(x) if rotary is None else module(x, rotary=rotary)
    (y * dy).sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    return module, y.detach(), x.grad, grads


@pytest.mark.parametrize("path", ["scratch", "torch"])
@pytest.mark.parametrize("case", experiments.TP_CASES)
def test_tensor_parallel_block_equals_single_process(results, case, path):
    module, y, x_grad, grads = reference(case)
    spec = experiments.tp_shard_spec(module)
    for rank, result in enumerate(results):
        got = result[case, path]
        # 1e-5: the ranks' partial sums add in a different order than one matmul does
        torch.testing.assert_close(got["y"], y, rtol=0, atol=1e-5)
        torch.testing.assert_close(got["x_grad"], x_grad, rtol=0, atol=1e-5)
        assert got["grads"].keys() == spec.keys()
        for name, (parts, dim) in spec.items():
            full = grads[name]
            expected = (
                full if dim is None else shard_parts(full, parts, dim, rank, WORLD)
            )
            torch.testing.assert_close(
                got["grads"][name],
                expected,
                rtol=0,
                atol=1e-5,
                msg=lambda m, n=name: f"{n}: {m}",
            )


def test_splitting_a_fused_gate_up_weight_in_one_cut_is_wrong(results):
    # Rank 0 would get the whole gate and rank 1 the whole up projection: the output is
    # a different function, off by about the output's own size, not by rounding.
    _, y, _, _ = reference("gated")
    assert (results[0]["gated", "naive"]["y"] - y).abs().max() > 0.1 * y.abs().max()


def test_shard_parts_splits_each_part():
    qkv = torch.arange(12.0)  # [Q Q Q Q | K K | V V ...] with parts 4, 4, 4
    assert shard_parts(qkv, [4, 4, 4], 0, 0, 2).tolist() == [0, 1, 4, 5, 8, 9]
    assert shard_parts(qkv, [4, 4, 4], 0, 1, 2).tolist() == [2, 3, 6, 7, 10, 11]
    assert shard_parts(qkv, None, 0, 1, 2).tolist() == list(range(6, 12))
    with pytest.raises(ValueError, match="split evenly"):
        shard_parts(qkv, [6, 3, 3], 0, 0, 2)
    with pytest.raises(ValueError, match="add up"):
        shard_parts(qkv, [4, 4], 0, 0, 2)
