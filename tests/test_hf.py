"""GPT-2 in the Hugging Face layout, loaded into the book's GPT (llmbook.hf): the logits
equal those of transformers' GPT2LMHeadModel. The weights are made offline by
transformers itself from a GPT2Config, so the check runs anywhere."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llmbook import hf


def hf_gpt2(activation: str = "gelu_new") -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                        activation_function=activation, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # every weight random, LayerNorms included: a mix-up shows
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_gpt2_logits_equal_transformers(activation):
    theirs = hf_gpt2(activation)
    ours = hf.from_hf_gpt2(theirs.state_dict(), hf.gpt2_config(theirs.config))
    ids = torch.randint(0, 97, (3, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = theirs(ids).logits
        got, _ = ours(ids)
    assert (got - want).abs().max().item() < 1e-5


def test_the_loader_names_what_does_not_fit():
    theirs = hf_gpt2()
    state = dict(theirs.state_dict())
    config = hf.gpt2_config(theirs.config)
    missing = {k: v for k, v in state.items() if "h.1.mlp.c_fc.weight" not in k}
    with pytest.raises(KeyError, match="missing"):
        hf.from_hf_gpt2(missing, config)
    with pytest.raises(KeyError, match="unexpected key 'h.0.attn.rotary'"):
        hf.from_hf_gpt2({**state, "transformer.h.0.attn.rotary": torch.zeros(1)}, config)
    wider = {**theirs.config.to_dict(), "n_inner": 100}
    with pytest.raises(ValueError, match="n_inner=100"):
        hf.gpt2_config(wider)
    with pytest.raises(ValueError, match="activation_function='swish'"):
        hf.gpt2_config({**theirs.config.to_dict(), "activation_function": "swish"})
