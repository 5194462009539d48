"""What a model costs, from its configuration alone: parameters, FLOPs, cache memory and
the memory traffic of a forward pass. Chapters 3 to 7 count with these formulas; a 7B
model costs nothing to count.

Memory for training state (weights, gradients, optimizer moments) and activations is in
:mod:`llmbook.memory`, measured against what autograd actually saves.
"""

from __future__ import annotations

from llmbook.model import GPTConfig



def count_parameters(config: GPTConfig) -> dict[str, int]:
    """The parameters of ``GPT(config)`` by component, from the shapes alone.

    Keys: ``token_embedding``, ``position_embedding``, ``attention``, ``mlp``, ``norms`` and
    ``output_head`` (zero when tied: the head is the token embedding); the values sum to the
    total.
    """
    C, L, V = config.d_model, config.n_layer, config.vocab_size
    b = 1 if config.bias else 0
    # q, k, v side by side
    qkv_out = (config.n_head + 2 * config.kv_heads) * config.head_dim
    attention = (C * qkv_out + b * qkv_out) + (C * C + b * C)  # qkv, then output projection
    n_in = 2 * config.d_ff if config.gated else config.d_ff
    mlp = (C * n_in + b * n_in) + (config.d_ff * C + b * C)
    norm = C if config.norm == "rmsnorm" else C * (1 + b)
    n_norms = 2 * L + (1 if config.norm_position == "pre" else 0)
    return {
        "token_embedding": V * C,
        "position_embedding": (config.block_size * C
                               if config.pos_encoding == "learned" else 0),
        "attention": L * attention,
        "mlp": L * mlp,
        "norms": n_norms * norm,
        "output_head": 0 if config.tie_weights else V * C,
    }


def matmul_parameters(config: GPTConfig) -> int:
    """The weights that every token meets in a matrix multiply: the attention and MLP
    matrices and the output head, tied or not. Lookups, biases and norm gains cost no
    multiplies."""
    C = config.d_model
    qkv_out = (config.n_head + 2 * config.kv_heads) * config.head_dim
    n_in = 2 * config.d_ff if config.gated else config.d_ff
    per_layer = C * qkv_out + C * C + C * n_in + config.d_ff * C
    return config.n_layer * per_layer + config.vocab_size * C


def flops_per_token(config: GPTConfig, seq_len: int | None = None, *,
                    training: bool = True) -> int:
    """Floating-point operations per token, a multiply-add counting as two (Chapter 4; PaLM,
    Chowdhery et al., 2022, appendix B).

    A token's forward pass meets every weight matrix once, ``2 N`` with ``N`` the
    :func:`matmul_parameters`, and in each layer scores its query against ``T`` keys and
    mixes ``T`` values, ``2 * 2 T C``. The backward pass costs twice the forward, so
    training costs

        6 N + 12 L T C

    per token (``training=False``: the forward third). A causal mask could skip half of the
    attention term; like PaLM and ``FlopCounterMode`` we count the full ``T x T`` product.
    ``seq_len`` defaults to the context length.
    """
    T = config.block_size if seq_len is None else seq_len
    if T < 1:
        raise ValueError(f"seq_len must be positive, got {T}")
    forward = 2 * matmul_parameters(config) + 4 * config.n_layer * T * config.d_model
    return 3 * forward if training else forward


def kv_cache_bytes(*, n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int,
                   batch_size: int = 1, bytes_per_value: int = 2) -> int:
    """Memory of a full KV cache: a key and a value vector per layer, key/value head and
    position (Chapter 3), bfloat16 by default. For a model, ``**kv_shape(config)``."""
    sizes = (n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_value)
    if min(sizes) < 1:
        raise ValueError(f"KV-cache sizes must be positive, got n_layers={n_layers}, "
                         f"n_kv_heads={n_kv_heads}, head_dim={head_dim}, "
                         f"seq_len={seq_len}, batch_size={batch_size}, "
                         f"bytes_per_value={bytes_per_value}")
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_value


def kv_shape(config: GPTConfig) -> dict[str, int]:
    """The arguments of :func:`kv_cache_bytes` that a model's configuration fixes."""
    return {"n_layers": config.n_layer, "n_kv_heads": config.kv_heads,
            "head_dim": config.head_dim}


def forward_cost(config: GPTConfig, *, batch_size: int, new_tokens: int, context: int = 0,
                 bytes_per_value: int = 2) -> dict[str, float]:
    """FLOPs and the least memory traffic of one forward pass that feeds ``new_tokens``
    tokens to each of ``batch_size`` sequences after ``context`` tokens already in the KV
    cache: a prefill is ``context=0, new_tokens=T``, a decode step ``new_tokens=1``.

    ``flops``: each new token meets every weight matrix (``2 N``) and attends to the
    ``context + new_tokens`` positions (``4 L (context + new_tokens) d``, the full product
    as in :func:`flops_per_token`). ``bytes``: every weight matrix read once, the cache
    read and the new keys and values written, at ``bytes_per_value``; activations are left
    out (a fused kernel keeps most of them on chip), so ``bytes`` is a floor and
    ``intensity = flops / bytes`` (FLOPs per byte) a ceiling.
    """
    if min(batch_size, new_tokens) < 1 or context < 0 or bytes_per_value < 1:
        raise ValueError(f"need batch_size, new_tokens, bytes_per_value >= 1 and "
                         f"context >= 0; got {batch_size}, {new_tokens}, "
                         f"{bytes_per_value}, {context}")
    if context + new_tokens > config.block_size:
        raise ValueError(f"context + new_tokens = {context + new_tokens} exceeds the "
                         f"context length block_size={config.block_size}")
    tokens = batch_size * new_tokens
    flops = tokens * (2 * matmul_parameters(config)
                      + 4 * config.n_layer * (context + new_tokens) * config.d_model)
    kv = {**kv_shape(config), "batch_size": batch_size, "bytes_per_value": bytes_per_value}
    traffic = (bytes_per_value * matmul_parameters(config)
               + (kv_cache_bytes(**kv, seq_len=context) if context else 0)
               + kv_cache_bytes(**kv, seq_len=new_tokens))
    return {"flops": float(flops), "bytes": float(traffic), "intensity": flops / traffic}


def roofline_seconds(flops: float, nbytes: float, *, peak_flops: float,
                     bandwidth: float) -> float:
    """The roofline model's time for work of ``flops`` over ``nbytes`` of memory traffic:
    whichever takes longer at the device's peak, the arithmetic (``flops / peak_flops``)
    or the traffic (``nbytes / bandwidth``). The two are equal at an intensity of
    ``peak_flops / bandwidth`` FLOPs per byte, the ridge point."""
    if peak_flops <= 0 or bandwidth <= 0 or flops < 0 or nbytes < 0:
        raise ValueError(f"need peak_flops, bandwidth > 0 and flops, nbytes >= 0; got "
                         f"{peak_flops}, {bandwidth}, {flops}, {nbytes}")
    return max(flops / peak_flops, nbytes / bandwidth)
