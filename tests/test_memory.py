"""Training memory: bytes per parameter, activations predicted against measured, and
activation checkpointing (llmbook.memory, Chapter 6)."""

import pytest
import torch

from llmbook import memory
from llmbook.model import GPT, GPTConfig

# Prediction and measurement agree to the byte per block on torch 2.13's CPU kernels; 2%
# leaves room for a kernel that saves one more small tensor, and stays inside the
# chapter's promise of 5%.
TOLERANCE = 0.02


def test_sixteen_bytes_per_parameter():
    config = GPTConfig.preset("gpt2")
    n = memory.n_parameters(config)
    for precision in ("fp32", "bf16-mixed", "autocast"):
        assert memory.model_state_bytes(config, precision)["total"] == 16 * n
    mixed = memory.model_state_bytes(config, "bf16-mixed")
    assert (mixed["weights"], mixed["grads"], mixed["master"]) == (2 * n, 2 * n, 4 * n)
    assert mixed["adam_m"] == mixed["adam_v"] == 4 * n
    assert memory.model_state_bytes(config, "bf16-pure")["total"] == 8 * n


def test_parameter_count_matches_the_model():
    config = GPTConfig.preset("book-cpu")
    assert memory.n_parameters(config) == GPT(config).num_parameters()


def test_memory_table_7b_does_not_fit_one_gpu():
    rows = {(r["model"], r["precision"]): r for r in memory.memory_table()}
    assert len(rows) == 10
    llama = rows["llama2-7b", "fp32"]
    assert 6.7e9 < llama["params"] < 6.8e9  # Llama 2 7B: 6.74B parameters
    assert llama["total_GB"] == pytest.approx(16 * llama["params"] / 1e9)
    assert not llama["fits"] and not rows["llama2-7b", "bf16-mixed"]["fits"]
    assert rows["gpt2", "fp32"]["fits"] and rows["gpt2-xl", "bf16-mixed"]["fits"]
    assert 124e6 < rows["gpt2", "fp32"]["params"] < 125e6


def test_bad_settings_are_clear_errors():
    config = GPTConfig.preset("book-cpu")
    with pytest.raises(ValueError, match="precision"):
        memory.model_state_bytes(config, "fp8")
    with pytest.raises(ValueError, match="dtype"):
        memory.activation_terms(config, 1, 8, dtype="fp8")
    with pytest.raises(ValueError, match="kernels"):
        memory.activation_terms(config, 1, 8, kernels="tpu")
    with pytest.raises(ValueError, match="checkpointing"):
        memory.predict_activation_bytes(config, 1, 8, checkpointing="all")
    with pytest.raises(ValueError, match="mode"):
        memory.apply_checkpointing(GPT(config), "layer")


def test_korthikanti_formula_by_hand():
    # s=2048, b=1, h=4096, a=32: 2048*4096*34 + 5*32*2048^2 bytes
    assert memory.korthikanti_bytes(2048, 1, 4096, 32) == 285_212_672 + 671_088_640


CASES = [  # (preset, overrides, batch, seq_len)
    ("book-cpu", {}, 2, 64),
    ("book-cpu", {"fused": False}, 2, 32),  # our attention: T x T matrices saved
    ("book-gpu", {}, 1, 64),  # dropout 0.2: masks, and torch's plain attention path
    ("book-gpu", {"dropout": 0.0}, 1, 64),
    # GPT-2 small's block (one layer built: the block does not depend on the rest):
    ("gpt2", {"n_layer": 1}, 1, 32),  # LayerNorm, GELU, learned positions, no RoPE
    ("gpt2", {"n_layer": 1, "fused": False}, 2, 16),  # written-out LayerNorm, attention
]


@pytest.mark.parametrize("name,overrides,batch,seq_len", CASES)
def test_block_activations_predicted_equal_measured(name, overrides, batch, seq_len):
    config = GPTConfig.preset(name, **overrides)
    torch.manual_seed(0)
    measured = memory.measure_block_bytes(GPT(config), batch, seq_len)
    predicted = sum(memory.activation_terms(config, batch, seq_len).values())
    assert measured == pytest.approx(predicted, rel=TOLERANCE)


@pytest.mark.parametrize("dtype", ["float32", "autocast-bfloat16"])
@pytest.mark.parametrize("mode", memory.CHECKPOINTING)
@pytest.mark.parametrize("name,overrides,batch,seq_len", CASES[:3])
def test_model_activations_with_checkpointing(name, overrides, batch, seq_len, mode,
                                              dtype):
    config = GPTConfig.preset(name, **overrides)
    torch.manual_seed(0)
    model = GPT(config)
    if mode != "none":
        memory.apply_checkpointing(model, mode)
    idx = torch.randint(0, config.vocab_size, (batch, seq_len))
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype != "float32"):
        measured = memory.measure_activation_bytes(model, idx, idx)
    predicted = memory.predict_activation_bytes(
        config, batch, seq_len, checkpointing=mode, dtype=dtype)["total"]
    assert measured == pytest.approx(predicted, rel=TOLERANCE)


def test_gpt2_small_whole_model_predicted_equal_measured():
    config = GPTConfig.preset("gpt2")
    torch.manual_seed(0)
    idx = torch.randint(0, config.vocab_size, (1, 32))
    measured = memory.measure_activation_bytes(GPT(config), idx, idx)
    predicted = memory.predict_activation_bytes(config, 1, 32)["total"]
    assert measured == pytest.approx(predicted, rel=TOLERANCE)


def test_checkpointing_saves_memory_in_order():
    config = GPTConfig.preset("book-cpu")
    saved = {mode: memory.predict_activation_bytes(config, 4, 128, checkpointing=mode)
             for mode in memory.CHECKPOINTING}
    assert saved["block"]["per_layer"] < saved["attention"]["per_layer"]
    assert saved["attention"]["per_layer"] < saved["none"]["per_layer"]
    # per block, only the input survives: B T C float32 values
    assert saved["block"]["per_layer"] == 4 * 128 * config.d_model * 4


def _grads(model, idx):
    model.zero_grad()
    _, loss = model(idx, idx)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("mode", ["block", "attention"])
def test_checkpointing_leaves_loss_and_gradients_unchanged(mode):
    config = GPTConfig.preset("book-cpu", dropout=0.0)
    torch.manual_seed(0)
    plain = GPT(config)
    recomputed = memory.apply_checkpointing(GPT(config), mode)
    for a, b in zip(plain.parameters(), recomputed.parameters()):
        b.data.copy_(a.data)
    idx = torch.randint(0, config.vocab_size, (2, 32))
    loss_a, grads_a = _grads(plain, idx)
    loss_b, grads_b = _grads(recomputed, idx)
    assert torch.equal(loss_a, loss_b)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, rtol=0, atol=1e-6)


def test_remove_checkpointing_restores_the_parameter_names():
    model = GPT(GPTConfig.preset("book-cpu"))
    names = list(model.state_dict())
    for mode in ("block", "attention"):
        memory.apply_checkpointing(model, mode)
        assert list(model.state_dict()) != names
        assert list(memory.remove_checkpointing(model).state_dict()) == names


def test_measuring_does_not_change_the_gradients():
    config = GPTConfig.preset("book-cpu")
    torch.manual_seed(0)
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (2, 16))
    _, reference = _grads(model, idx)
    model.zero_grad()
    _, (_, loss) = memory.saved_activation_bytes(lambda: model(idx, idx))
    loss.backward()
    for p, g in zip(model.parameters(), reference):
        assert torch.equal(p.grad, g)


def test_recompute_overhead_is_a_positive_ratio():
    config = GPTConfig.preset("book-cpu", n_layer=2, vocab_size=256)
    ratio = memory.recompute_overhead(config, 2, 32, repeats=3)
    assert ratio > 0  # a timing: its value is a benchmark figure, not a test


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peak_at_least_the_saved_activations():
    config = GPTConfig.preset("book-gpu", dropout=0.0)
    model = GPT(config).cuda()
    idx = torch.randint(0, config.vocab_size, (4, 256), device="cuda")
    peak = memory.cuda_activation_bytes(model, idx, idx)
    predicted = memory.predict_activation_bytes(config, 4, 256, kernels="cuda")["total"]
    assert peak >= 0.9 * predicted
