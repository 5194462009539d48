"""A GPT, built piece by piece: configuration, block, model, and what it costs. Chapter 4.

One class, :class:`GPT`, covers the GPT-2 family and a Llama-style variant; the differences
are fields of :class:`GPTConfig` (norm, activation, positional scheme, biases, weight
tying), and the named shapes live in :data:`PRESETS`. Attention comes from
:mod:`llmbook.attention` (Chapter 3); norms, MLPs and positional encodings from
:mod:`llmbook.layers`; sampling is in :mod:`llmbook.generate`.

Shapes: ``B`` batch, ``T`` sequence length, ``C`` width (``d_model``), ``V`` vocabulary,
``L`` layers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from llmbook.attention import CausalSelfAttention, KVCache
from llmbook.layers import (
    ACTIVATIONS,
    GATED_ACTIVATIONS,
    MLP,
    GatedMLP,
    LayerNorm,
    LearnedPositionalEmbedding,
    RMSNorm,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
)

NORMS = ("layernorm", "rmsnorm")
POSITIONAL = ("learned", "sinusoidal", "rope", "none")
NORM_POSITIONS = ("pre", "post")


@dataclass(frozen=True)
class GPTConfig:
    """Everything that defines a GPT's architecture; the defaults are GPT-2 small.
    Chapter 4.

    Validated on construction. Derive variants with :meth:`preset` or
    ``dataclasses.replace`` (which validates again).
    """

    vocab_size: int = 50257
    block_size: int = 1024  # context length: the most positions the model attends over
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None: n_head
    d_model: int = 768  # the width of the residual stream
    mlp_ratio: float = 4.0  # MLP hidden width / d_model (a gated MLP uses 2/3 of it)
    mlp_multiple_of: int = 1  # round the MLP hidden width up to a multiple (Llama: 256)
    dropout: float = 0.0
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-5
    # "pre": x + f(norm(x)); "post": norm(x + f(x)), the 2017 way
    norm_position: str = "pre"
    # "gelu" | "gelu_tanh" | "relu" (plain MLP); "swiglu" | "geglu" (gated MLP)
    activation: str = "gelu"
    pos_encoding: str = "learned"  # "learned" | "sinusoidal" | "rope" | "none"
    rope_base: float = 10000.0
    tie_weights: bool = True  # the output head reuses the token embedding matrix
    bias: bool = True  # biases in the linear layers and LayerNorms
    init_std: float = 0.02
    fused: bool = True  # torch's fused kernels (attention, norms); False: ours, same maths

    def __post_init__(self) -> None:
        sizes = ("vocab_size", "block_size", "n_layer", "n_head", "d_model",
                 "mlp_multiple_of")
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, "
                                 f"got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}: each "
                "head gets d_model / n_head features; pick a width that is a multiple of "
                "the head count"
            )
        n_kv = self.n_kv_head
        if n_kv is not None and (not isinstance(n_kv, int) or n_kv < 1
                                 or self.n_head % n_kv):
            raise ValueError(
                f"n_kv_head={n_kv!r} must be a positive divisor of n_head={self.n_head}: "
                "in grouped-query attention each key/value head serves an equal group of "
                "query heads (None means n_head)"
            )
        choices = (("norm", NORMS), ("norm_position", NORM_POSITIONS),
                   ("activation", tuple(ACTIVATIONS) + tuple(GATED_ACTIVATIONS)),
                   ("pos_encoding", POSITIONAL))
        for name, valid in choices:
            if getattr(self, name) not in valid:
                value = getattr(self, name)
                raise ValueError(f"unknown {name} {value!r}; choose one of {valid}")
        if self.pos_encoding in ("rope", "sinusoidal"):
            rope = self.pos_encoding == "rope"
            width = self.head_dim if rope else self.d_model
            if width % 2:
                what = "head_dim (d_model / n_head)" if rope else "d_model"
                raise ValueError(
                    f"pos_encoding={self.pos_encoding!r} works on pairs of features, so "
                    f"{what} must be even, got {width}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("mlp_ratio", "norm_eps", "rope_base", "init_std"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {value!r}")

    # -- derived sizes ---------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads: ``n_kv_head``, or ``n_head`` when that is None."""
        return self.n_kv_head or self.n_head

    @property
    def gated(self) -> bool:
        return self.activation in GATED_ACTIVATIONS

    @property
    def d_ff(self) -> int:
        """The MLP's hidden width: ``mlp_ratio * d_model``, times 2/3 for a gated MLP,
        rounded up to a multiple of ``mlp_multiple_of``: Llama 2 7B's 2/3 * 4 * 4096 =
        10922.7 becomes 11008.
        """
        hidden = int(self.mlp_ratio * self.d_model)
        if self.gated:
            # three matrices instead of two: same parameter count
            hidden = int(2 * hidden / 3)
        return self.mlp_multiple_of * math.ceil(hidden / self.mlp_multiple_of)

    # -- named shapes ----------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """The configuration named ``name`` in :data:`PRESETS`, with fields overridden, e.g.
        ``GPTConfig.preset("book-cpu", vocab_size=tokenizer.vocab_size)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise TypeError(f"GPTConfig has no field(s) {unknown}; its fields are {fields}")
        return cls(**{**PRESETS[name], **overrides})


_LLAMA_STYLE = dict(norm="rmsnorm", activation="swiglu", pos_encoding="rope", bias=False,
                    tie_weights=False)

PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2 (Radford et al., 2019): the four released shapes; V = 50257, T = 1024, tied
    # head.
    "gpt2": dict(n_layer=12, n_head=12, d_model=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, d_model=1024),  # 355M
    "gpt2-large": dict(n_layer=36, n_head=20, d_model=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, d_model=1600),  # 1.5B
    # GPT-2 small's shape with Llama's parts: RMSNorm, RoPE, SwiGLU, no biases, untied head.
    "llama-small": dict(n_layer=12, n_head=12, d_model=768, mlp_multiple_of=64,
                        **_LLAMA_STYLE),
    # Llama 2 7B (Touvron et al., 2023), for counting: 6.74B parameters.
    "llama2-7b": dict(vocab_size=32000, block_size=4096, n_layer=32, n_head=32,
                      d_model=4096, mlp_multiple_of=256, **_LLAMA_STYLE),
    # The book's own sizes: Llama-style blocks with a tied head (at this scale the embedding
    # is a large share of the model). vocab_size is a placeholder: pass the tokenizer's.
    "book-cpu": dict(  # ~1M parameters: trains in minutes on two CPU cores
        vocab_size=4096, block_size=128, n_layer=4, n_head=4, d_model=128,
        mlp_multiple_of=32, **{**_LLAMA_STYLE, "tie_weights": True},
    ),
    "book-gpu": dict(  # ~10M non-embedding parameters: nanoGPT's Shakespeare scale
        vocab_size=4096, block_size=512, n_layer=6, n_head=6, d_model=384,
        mlp_multiple_of=64, dropout=0.2, **{**_LLAMA_STYLE, "tie_weights": True},
    ),
}


# -----------------------------------------------------------------------------------------
# The model


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, eps=config.norm_eps, fused=config.fused)
    return LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias,
                     fused=config.fused)


def make_mlp(config: GPTConfig) -> nn.Module:
    mlp_class = GatedMLP if config.gated else MLP
    return mlp_class(config.d_model, config.d_ff, config.activation, bias=config.bias)


class Block(nn.Module):
    """A transformer block: attention, then an MLP, each a residual branch with a norm.

    The residual stream ``x`` flows straight through; each branch reads a normalised copy
    and adds its result back (pre-norm, GPT-2 onward). Post-norm, the 2017 original,
    normalises the stream itself after each addition, which puts a norm on the gradient's
    direct path (Chapter 4). Dropout, when training with it, drops parts of each branch's
    output before it joins the stream ("residual dropout", Vaswani et al., 2017).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.prenorm = config.norm_position == "pre"
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config.d_model, config.n_head, config.kv_heads,
                                        dropout=config.dropout, bias=config.bias,
                                        fused=config.fused)
        self.norm2 = make_norm(config)
        self.mlp = make_mlp(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, *, rotary: RotaryEmbedding | None = None,
                cache: KVCache | None = None) -> Tensor:
        if self.prenorm:  # x: (B, T, C), the residual stream
            x = x + self.drop(self.attn(self.norm1(x), rotary=rotary, cache=cache))
            x = x + self.drop(self.mlp(self.norm2(x)))
        else:
            x = self.norm1(x + self.drop(self.attn(x, rotary=rotary, cache=cache)))
            x = self.norm2(x + self.drop(self.mlp(x)))
        return x


class GPT(nn.Module):
    """A decoder-only transformer language model. Chapter 4 builds it.

    token ids -> embedding (+ positions) -> L blocks -> final norm -> output head -> logits.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT expects a GPTConfig, got {type(config).__name__}")
        self.config = config
        C = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        self.pos_emb: nn.Module | None = None
        if config.pos_encoding == "learned":
            self.pos_emb = LearnedPositionalEmbedding(config.block_size, C)
        elif config.pos_encoding == "sinusoidal":
            self.pos_emb = SinusoidalPositionalEncoding(config.block_size, C)
        self.rotary = None
        if config.pos_encoding == "rope":
            self.rotary = RotaryEmbedding(config.head_dim, config.block_size,
                                          config.rope_base)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        # Pre-norm leaves the stream unnormalised, so it needs a final norm; post-norm has
        # one.
        self.norm_f = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_weights:  # one (V, C) matrix reads tokens in and scores them out
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: weights N(0, 0.02^2), biases zero, norms the identity,
        and the projections that write into the residual stream scaled down by sqrt(2 L).

        Each block adds two branch outputs to the stream, so without the scaling the
        stream's variance grows in proportion to depth (Chapter 4 measures it).
        """
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, LearnedPositionalEmbedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (LayerNorm, RMSNorm)):
                module.reset_parameters()
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    def hidden_states(self, idx: Tensor, *, caches: list[KVCache] | None = None) -> Tensor:
        """The final normalised residual stream ``(B, T, C)`` for token ids ``idx``
        ``(B, T)``.

        With ``caches`` (one :class:`~llmbook.attention.KVCache` per block, from
        :meth:`new_kv_caches`), ``idx`` continues the sequence held in the caches: its
        positions start where the caches end.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (batch, time), got {tuple(idx.shape)}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"idx must hold integer token ids (torch.long), "
                            f"got {idx.dtype}")
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(
                f"expected one KV cache per block ({len(self.blocks)}), got {len(caches)}"
            )
        B, T = idx.shape
        start = caches[0].length if caches is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"positions {start}..{start + T - 1} exceed the context length block_size="
                f"{self.config.block_size}; crop the input to its last "
                f"{self.config.block_size} tokens"
            )
        x = self.tok_emb(idx)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(T, start)  # (T, C), broadcast over the batch
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rotary=self.rotary, cache=None if caches is None else caches[i])
        return self.norm_f(x)  # (B, T, C)

    def forward(self, idx: Tensor, targets: Tensor | None = None, *,
                caches: list[KVCache] | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits ``(B, T, V)`` at every position and, given ``targets`` ``(B, T)``, the
        mean cross-entropy in nats per token (targets of -100 are ignored, PyTorch's
        convention)."""
        logits = self.lm_head(self.hidden_states(idx, caches=caches))  # (B, T, V)
        if targets is None:
            return logits, None
        if targets.shape != idx.shape:
            raise ValueError(
                f"targets must have the shape of idx {tuple(idx.shape)}, "
                f"got {tuple(targets.shape)}"
            )
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                               ignore_index=-100)
        return logits, loss

    def new_kv_caches(self, batch_size: int, max_len: int | None = None, *,
                      dtype: torch.dtype | None = None) -> list[KVCache]:
        """Empty key/value caches, one per block, on the model's device (``max_len``
        defaults to the context length).

        They hold keys and values in the dtype attention computes them in: ``dtype`` if
        given, else autocast's dtype when autocast is on for the model's device, else the
        weights'.
        """
        weight = self.tok_emb.weight
        if dtype is None:
            device_type = weight.device.type
            on = device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)
            dtype = torch.get_autocast_dtype(device_type) if on else weight.dtype
        max_len = self.config.block_size if max_len is None else max_len
        return [KVCache(batch_size, self.config.kv_heads, max_len, self.config.head_dim,
                        device=weight.device, dtype=dtype)
                for _ in self.blocks]

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Trainable parameters, a shared tensor counted once.

        ``non_embedding=True`` leaves out the lookup tables (token and learned position
        embeddings), the convention of Kaplan et al. (2020) for scaling laws. With tied
        weights the output head *is* the token table and goes too; an untied head is a real
        matrix multiply and stays.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel()
            if isinstance(self.pos_emb, LearnedPositionalEmbedding):
                n -= self.pos_emb.weight.numel()
        return n
