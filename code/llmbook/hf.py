"""GPT-2 checkpoints in the Hugging Face layout, loaded into the book's :class:`GPT`.
Chapter 4.

The book's model and ``transformers``' ``GPT2LMHeadModel`` compute the same function; they
name and store the weights differently. GPT-2's original code used a ``Conv1D`` whose
weight is ``(in, out)``, the transpose of ``nn.Linear``'s ``(out, in)``, and Hugging Face
kept it. So loading is a renaming, plus a transpose for the four matrices of each block.

Nothing here downloads: pass a state dict you already have (``GPT2LMHeadModel(...)
.state_dict()``, or a ``safetensors`` file read from disk) and its config.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from llmbook.model import GPT, GPTConfig

# Hugging Face's names for GPT-2's activation: "gelu_new" is the tanh approximation the
# released checkpoints were trained with.
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                "relu": "relu"}
# per block: Hugging Face module -> ours; the weights of the four Conv1D matrices are
# stored (in, out) and get transposed
_BLOCK = {"ln_1": "norm1", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
          "ln_2": "norm2", "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
_OUTER = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.weight",
          "ln_f.weight": "norm_f.weight", "ln_f.bias": "norm_f.bias"}
# buffers some versions save (the causal mask): not weights
_BUFFERS = (".attn.bias", ".attn.masked_bias")


def gpt2_config(hf: Mapping[str, Any] | Any) -> GPTConfig:
    """Our :class:`GPTConfig` for a Hugging Face ``GPT2Config`` (the object or its
    ``to_dict()``). Fails, naming the field, on what our model does not implement."""
    get = hf.get if isinstance(hf, Mapping) else lambda k, d=None: getattr(hf, k, d)
    activation = get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation_function={activation!r} has no counterpart here; "
                         f"supported: {sorted(_ACTIVATIONS)}")
    if get("n_inner") not in (None, 4 * get("n_embd")):
        raise ValueError(f"n_inner={get('n_inner')} is not 4 * n_embd; the book's GPT-2 "
                         "MLP is 4 times as wide as the model")
    if not get("scale_attn_weights", True) or get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError("only GPT-2's attention scaling (1/sqrt(head_dim)) is implemented")
    return GPTConfig(vocab_size=get("vocab_size"), block_size=get("n_positions"),
                     n_layer=get("n_layer"), n_head=get("n_head"), d_model=get("n_embd"),
                     norm_eps=get("layer_norm_epsilon", 1e-5),
                     activation=_ACTIVATIONS[activation], tie_weights=True, bias=True)


def from_hf_gpt2(state_dict: Mapping[str, torch.Tensor], config: GPTConfig) -> GPT:
    """A :class:`GPT` holding the weights of a Hugging Face GPT-2 state dict (keys with or
    without the ``transformer.`` prefix of ``GPT2LMHeadModel``). Every weight of ours must
    be filled and every weight given must be used: a missing or unexpected key is an
    error that names it."""
    hf = {k.removeprefix("transformer."): v for k, v in state_dict.items()
          if not k.endswith(_BUFFERS)}
    head = hf.pop("lm_head.weight", None)
    if head is not None and not torch.equal(head, hf.get("wte.weight", head)):
        raise ValueError("lm_head.weight differs from wte.weight: GPT-2 ties them, and so "
                         "does the book's GPT-2; an untied head is not supported here")
    ours: dict[str, torch.Tensor] = {}
    for name, tensor in hf.items():
        if name in _OUTER:
            ours[_OUTER[name]] = tensor
            continue
        layer, _, rest = name.removeprefix("h.").partition(".")
        module, _, kind = rest.rpartition(".")
        if not name.startswith("h.") or not layer.isdigit() or module not in _BLOCK:
            raise KeyError(f"unexpected key {name!r} in the GPT-2 state dict")
        if kind == "weight" and not module.startswith("ln_"):
            tensor = tensor.t()  # Conv1D's (in, out) to nn.Linear's (out, in)
        ours[f"blocks.{layer}.{_BLOCK[module]}.{kind}"] = tensor
    model = GPT(config)
    expected = {k for k in model.state_dict() if k != "lm_head.weight"}
    missing, unexpected = sorted(expected - set(ours)), sorted(set(ours) - expected)
    if missing or unexpected:
        raise KeyError(f"the state dict does not fit {config}: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, parameter in model.state_dict().items():
            if name != "lm_head.weight":  # tied: the embedding fills it
                if parameter.shape != ours[name].shape:
                    raise ValueError(f"{name}: shape {tuple(ours[name].shape)} in the "
                                     f"state dict, {tuple(parameter.shape)} in the model")
                parameter.copy_(ours[name])
    return model.eval()
