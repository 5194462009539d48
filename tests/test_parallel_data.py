"""Tests for data parallelism (Chapter 6): our DataParallel against one process and
against torch's DistributedDataParallel, ZeRO-1 against AdamW, FSDP2 and sharded
clipping, on 2 gloo processes. One spawn per experiment (starting processes costs
seconds; training them costs milliseconds), shared by the tests that read its results.
"""

from __future__ import annotations

import pytest
import torch
from llmbook.parallel import experiments
from llmbook.parallel.ddp import DataParallel
from llmbook.parallel.dist import spawn
from llmbook.parallel.zero import ZeroAdamW, adamw_state_bytes

WORLD, STEPS, ZERO_STEPS, MAX_NORM = 2, 3, 10, 0.5


def assert_same_params(actual: dict, expected: dict, atol: float) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(
            actual[name],
            value,
            rtol=0,
            atol=atol,
            msg=lambda m, n=name: f"{n}: {m}",
        )


@pytest.fixture(scope="module")
def results():
    return spawn(
        experiments.data_parallel_worker,
        WORLD,
        STEPS,
        ZERO_STEPS,
        MAX_NORM,
        timeout=180,
    )


@pytest.fixture(scope="module")
def ddp_results(results):
    return [r["ddp"] for r in results]


@pytest.mark.parametrize("variant", ["ours", "torch", "accumulate"])
def test_data_parallel_equals_one_process_on_the_whole_batch(ddp_results, variant):
    # Rank r starts from seed 100 + r; the broadcast makes rank 0's seed 100 win. The
    # frozen norm gain takes no part. 1e-6: the same float32 sums in another order.
    reference, _, _ = experiments.train_reference(STEPS, seed=100, freeze=True)
    untrained = experiments.tiny_gpt(100).norm_f.weight
    for rank in range(WORLD):
        params = ddp_results[rank][variant]
        assert_same_params(params, reference, atol=1e-6)
        assert torch.equal(params["norm_f.weight"], untrained.detach())


def test_ours_equals_torch_ddp(ddp_results):
    for rank in range(WORLD):
        assert_same_params(
            ddp_results[rank]["ours"], ddp_results[rank]["torch"], atol=1e-6
        )


def test_buckets_overlap_backward_and_skip_frozen_parameters(ddp_results):
    # 16 KiB buckets over a 0.03 MB model: several buckets, all but the last sent from
    # hooks while backward was still running (the last one fills with the first layer's
    # gradient, which autograd produces last, so it too goes from a hook).
    for result in ddp_results:
        assert result["buckets"] >= 2
        assert result["overlapped"] == result["buckets"]
        assert result["frozen_grad_is_none"]
        # "sum" is exactly world x "mean": halving before adding is exact in floats
        assert result["sum_minus_world_mean"] == 0.0


def test_zero1_equals_unsharded_adamw(results):
    results = [r["zero"] for r in results]
    reference, _, _ = experiments.train_reference(ZERO_STEPS)
    for result in results:
        assert_same_params(result["params"], reference, atol=1e-6)
        assert result["state_bytes"] == result["predicted_bytes"]
        assert result["state_bytes"] * WORLD == pytest.approx(
            result["unsharded_bytes"], abs=8 * WORLD
        )
    print(
        f"ZeRO-1 AdamW state per rank: {results[0]['state_bytes']} bytes of "
        f"{results[0]['unsharded_bytes']} unsharded ({results[0]['n_params']} params)"
    )


def test_fsdp2_and_sharded_clipping_equal_one_process(results):
    results = [r["fsdp"] for r in results]
    reference, norms, _ = experiments.train_reference(STEPS, max_norm=MAX_NORM)
    assert min(norms) > MAX_NORM  # clipping really scales every step
    for result in results:
        assert result["param_types"] == ["DTensor"]  # every parameter was sharded
        assert_same_params(result["params"], reference, atol=1e-6)
        assert result["norms"] == pytest.approx(norms, rel=1e-5)
        assert result["norms"] == pytest.approx(result["torch_norms"], rel=1e-5)


def test_fsdp2_bf16_stays_within_bfloat16_precision(results):
    # bfloat16 keeps 8 significant bits: relative rounding 2^-8 = 3.9e-3. The losses
    # (measured 4e-5 apart) and gradient norms (1e-3) of three steps stay inside it.
    _, norms, losses = experiments.train_reference(STEPS, max_norm=MAX_NORM)
    for result in results:
        bf16 = result["fsdp_bf16"]
        assert bf16["losses"] == pytest.approx(losses, rel=2**-8)
        assert bf16["norms"] == pytest.approx(norms, rel=2**-8)
        assert bf16["norms"] != pytest.approx(norms, rel=1e-6)  # it really ran in bf16


def test_adamw_state_bytes():
    assert adamw_state_bytes(10) == 80
    assert adamw_state_bytes(10, 4) == 2 * 3 * 4  # ceil(10 / 4) = 3 per rank, padded
    with pytest.raises(ValueError):
        adamw_state_bytes(10, 0)


def test_bad_arguments_are_one_line_errors():
    model = experiments.tiny_gpt(0)
    with pytest.raises(ValueError, match="unknown reduction"):
        DataParallel(model, reduction="max")
    with pytest.raises(ValueError, match="bucket_bytes"):
        DataParallel(model, bucket_bytes=0)
    with pytest.raises(RuntimeError, match="process group"):
        DataParallel(model)  # no init_process_group in this process
    with pytest.raises(ValueError, match="betas"):
        ZeroAdamW(model.parameters(), betas=(0.9, 1.0))
    with pytest.raises(RuntimeError, match="process group"):
        ZeroAdamW(model.parameters())
