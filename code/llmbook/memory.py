"""Training memory, predicted from the configuration and measured. Chapter 6.

Two kinds of memory fill a GPU during training:

1. **Model states**, a fixed number of bytes per parameter: the weights, their gradients
   and AdamW's two moments (plus a float32 master copy under mixed precision). This is
   the "16 bytes per parameter" rule (Rajbhandari et al., 2020, ZeRO), and it is why a
   7B model does not train on one 80 GB GPU: :func:`memory_table`.
2. **Activations**, the tensors the forward pass saves for the backward pass. They grow
   with batch and sequence length. Korthikanti et al. (2022) count
   ``s b h (34 + 5 a s / h)`` bytes per layer for an fp16 GPT with dropout; we derive
   the same kind of sum for *our* block, tensor by tensor (:func:`activation_terms`),
   and check it against what autograd really saves (:func:`saved_activation_bytes`).

Activation checkpointing (:func:`apply_checkpointing`) trades memory for time: a
checkpointed block keeps only its input and recomputes the rest during backward.
"""

from __future__ import annotations

import statistics
import time
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from llmbook.costs import count_parameters
from llmbook.model import GPT, GPTConfig

GB = 1e9

# --------------------------------------------------------------------------------------
# 1. Model states: bytes per parameter


@dataclass(frozen=True)
class BytesPerParam:
    """Bytes each parameter costs in training, by what holds them. Chapter 6."""

    weights: int
    grads: int
    master: int  # a float32 copy of the weights, kept when the weights are 16-bit
    adam_m: int
    adam_v: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.master + self.adam_m + self.adam_v


PRECISIONS: dict[str, BytesPerParam] = {
    # Everything float32: 4 + 4 + 4 + 4 = 16.
    "fp32": BytesPerParam(weights=4, grads=4, master=0, adam_m=4, adam_v=4),
    # Mixed precision as in Megatron and ZeRO: 16-bit weights and gradients for the
    # matrix multiplies, a float32 master copy for the update (a bf16 weight cannot
    # absorb an update smaller than 2^-8 of itself), float32 moments:
    # 2 + 2 + 4 + 4 + 4 = 16.
    "bf16-mixed": BytesPerParam(weights=2, grads=2, master=4, adam_m=4, adam_v=4),
    # torch.autocast keeps float32 weights and gradients and casts on the fly: also 16,
    # the saving is in activations only.
    "autocast": BytesPerParam(weights=4, grads=4, master=0, adam_m=4, adam_v=4),
    # Everything bf16, no master copy: half the memory, and updates that round away.
    "bf16-pure": BytesPerParam(weights=2, grads=2, master=0, adam_m=2, adam_v=2),
}


def _precision(name: str) -> BytesPerParam:
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of "
                         f"{sorted(PRECISIONS)}")
    return PRECISIONS[name]


def n_parameters(config: GPTConfig) -> int:
    """Trainable parameters of ``GPT(config)`` from the shapes alone (a tied head
    counted once)."""
    return sum(count_parameters(config).values())


def model_state_bytes(config: GPTConfig,
                      precision: str = "bf16-mixed") -> dict[str, int]:
    """Bytes of weights, gradients, master weights and AdamW moments for ``config``.

    Keys: ``weights``, ``grads``, ``master``, ``adam_m``, ``adam_v`` and ``total``.
    """
    per = _precision(precision)
    n = n_parameters(config)
    out = {name: n * getattr(per, name)
           for name in ("weights", "grads", "master", "adam_m", "adam_v")}
    out["total"] = sum(out.values())
    return out


# GPT-2's four sizes and Llama 2 7B (32 layers, d 4096, 32 heads, SwiGLU 11008,
# vocabulary 32000).
TABLE_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama2-7b")


def memory_table(models: Iterable[str] = TABLE_MODELS,
                 precisions: Iterable[str] = ("fp32", "bf16-mixed"),
                 gpu_bytes: float = 80e9) -> list[dict]:
    """One row per preset and precision: parameters, model-state gigabytes by part, and
    whether the states alone fit a GPU of ``gpu_bytes`` (80 GB: an H100)."""
    rows = []
    for name in models:
        config = GPTConfig.preset(name)
        for precision in precisions:
            states = model_state_bytes(config, precision)
            row = {"model": name, "params": n_parameters(config),
                   "precision": precision}
            row.update({f"{k}_GB": v / GB for k, v in states.items()})
            row["fits"] = states["total"] <= gpu_bytes
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------
# 2. Activations, predicted: the tensors our block saves, one by one

KERNELS = ("cpu", "cuda")
# (bytes of the residual stream and the norms' internals, bytes of the matmul outputs):
# autocast leaves float32 weights, so the stream stays float32; only matmuls run bf16.
DTYPES = {"float32": (4, 4), "bfloat16": (2, 2), "autocast-bfloat16": (4, 2)}


def _dtype_bytes(dtype: str) -> tuple[int, int]:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]




def activation_terms(config: GPTConfig, batch_size: int, seq_len: int, *,
                     dtype: str = "float32", kernels: str = "cpu",
                     training: bool = True) -> dict[str, int]:
    """Bytes saved for backward by one :class:`~llmbook.model.Block`, as named tensors.

    Derived for the block as written (pre-norm; the kernels torch picks on ``kernels``),
    so that each entry is a tensor some backward formula needs:

    - a norm saves its input, its per-token statistics (float32) and its output (the
      next linear layer's input); written out as a chain of ops (torch's CPU RMSNorm,
      our ``fused=False`` norms) it also keeps x_hat (and x - mean);
    - the fused attention kernel (flash, no dropout) keeps q, k, v, its output and the
      per-row log-sum-exp: no T x T matrix. With RoPE, q and k are new tensors and the
      output must be copied to (B, T, C) for ``proj``; v is a view that keeps the whole
      fused qkv output alive. Without RoPE, q, k and v are all views of that one tensor;
    - attention dropout (on the CPU) or ``fused=False`` takes the plain path, which
      keeps T x T matrices: softmax probabilities, dropout mask, dropped probabilities;
    - the MLP keeps its hidden activations (gated: [gate|up], act(gate), their product);
    - residual dropout keeps a mask (a float tensor on the CPU, bytes on CUDA).

    ``dtype``: ``"float32"``; ``"autocast-bfloat16"`` (matmul outputs in bf16, the
    residual stream and norms in float32, and bf16 copies of the weight matrices that
    autocast saves for backward); ``"bfloat16"`` (a model cast to bf16; not measured).
    ``kernels="cuda"`` is derived from the kernels' signatures, not measured.
    """
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}; choose one of {KERNELS}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, "
                         f"{seq_len}")
    s, e = _dtype_bytes(dtype)  # stream bytes, matmul-output bytes
    n, C, F = batch_size * seq_len, config.d_model, config.d_ff
    H, kv, T = config.n_head, config.kv_heads * config.head_dim, seq_len
    dropout = config.dropout if training else 0.0
    rope = config.pos_encoding == "rope"
    terms: dict[str, int] = {}
    rms = config.norm == "rmsnorm"
    one_kernel = config.fused and (kernels == "cuda" or not rms)  # else a chain of ops
    stats = 8 if one_kernel and not rms else 4  # rstd (and mean), float32 per token
    for i in (1, 2):
        terms[f"norm{i} input"] = n * C * s
        terms[f"norm{i} statistics"] = n * stats
        if not one_kernel:
            terms[f"norm{i} x_hat"] = n * C * s
            if not rms:
                terms[f"norm{i} x - mean"] = n * C * s
        terms[f"norm{i} output (linear input)"] = n * C * e
    plain = not config.fused or (dropout > 0 and kernels == "cpu")
    if plain:  # scores materialised: bmm saves q, k and v, folded to (B H, T, hd)
        # (1, H, T, hd) views of the qkv output fold without a copy; larger batches
        # copy. Our path repeats k and v to every head (GQA); torch's math path
        # scales q and k.
        # On the CPU torch's math path computes bf16 attention in float32 (a copy).
        a = 4 if config.fused and kernels == "cpu" else e
        kv_used = kv if config.fused else C
        v_view = batch_size == 1 and (config.fused or kv == C) and a == e
        if v_view:
            terms["fused qkv output (views)"] = n * (C + 2 * kv) * e
        else:
            terms["attention v copy"] = n * kv_used * a
        if not (v_view and not rope and not config.fused):
            terms["attention q, k"] = n * (C + kv_used) * a
        terms["attention probabilities"] = n * H * T * a
        if not config.fused:  # our softmax: exp in float32 and row sums
            terms["attention exp, row sums"] = n * H * (T * 4 + 2 * 4)
            terms["attention causal mask"] = T * T
        if dropout > 0:
            terms["attention dropout mask, dropped"] = 2 * n * H * T * a
        terms["attention output (proj input)"] = n * C * e
    else:
        qkv = C + 2 * kv
        terms["fused qkv output (v is a view)"] = n * qkv * e
        if rope:
            terms["rotated q, k"] = n * (C + kv) * e
        terms["attention output"] = n * C * e
        terms["attention log-sum-exp"] = n * H * 4
        if rope:  # the kernel's (B, H, T, hd) output is copied to (B, T, C)
            terms["attention output copy (proj input)"] = n * C * e
    if config.gated:
        terms["mlp [gate|up]"] = n * 2 * F * e
        terms["mlp act(gate)"] = n * F * e
        terms["mlp act(gate) * up (proj input)"] = n * F * e
    else:
        terms["mlp fc output"] = n * F * e
        terms["mlp act output (proj input)"] = n * F * e
    if dropout > 0:
        mask = e if kernels == "cpu" else 1  # the branch output's dtype
        terms["residual dropout masks"] = 2 * n * C * mask
    if dtype.startswith("autocast"):  # bf16 copies of the weights, saved for backward
        n_in = 2 * F if config.gated else F
        terms["attention weight copies (autocast)"] = 2 * (C * (C + 2 * kv) + C * C)
        terms["mlp weight copies (autocast)"] = 2 * (C * n_in + F * C)
    return terms


def predict_activation_bytes(config: GPTConfig, batch_size: int, seq_len: int, *,
                             checkpointing: str = "none", dtype: str = "float32",
                             kernels: str = "cpu") -> dict[str, int]:
    """Bytes autograd keeps for one training forward of ``GPT(config)``, by part.

    Keys: ``per_layer``, ``layers`` (``n_layer`` of them), ``embedding``, ``head``
    (final norm, the log-softmax of the logits, the targets) and ``total``.
    ``checkpointing="block"``: each block keeps only its input (the rest is recomputed).
    ``"attention"``: the attention sublayer of each block is recomputed, its input kept.
    """
    if checkpointing not in CHECKPOINTING:
        raise ValueError(f"unknown checkpointing {checkpointing!r}; choose one of "
                         f"{CHECKPOINTING}")
    s, e = _dtype_bytes(dtype)
    n, C = batch_size * seq_len, config.d_model
    terms = activation_terms(config, batch_size, seq_len, dtype=dtype,
                             kernels=kernels)
    if checkpointing == "block":
        per_layer = n * C * s
    elif checkpointing == "attention":  # its input is the norm's output, before a cast
        per_layer = sum(v for k, v in terms.items() if not k.startswith(_ATTENTION))
        per_layer += n * C * (s - e)
    else:
        per_layer = sum(terms.values())
    ids = n * 8  # int64 token ids, kept by the embedding
    embedding = ids + (n * C * (s if kernels == "cpu" else 1) if config.dropout else 0)
    final = {k: v for k, v in terms.items() if k.startswith("norm1")}
    head = sum(final.values()) + n * config.vocab_size * 4 + n * 8  # log-probs, targets
    if dtype.startswith("autocast"):
        head += 2 * config.vocab_size * C  # the output head's bf16 copy
    layers = config.n_layer * per_layer
    return {"per_layer": per_layer, "layers": layers, "embedding": embedding,
            "head": head, "total": layers + embedding + head}


_ATTENTION = ("attention", "fused qkv", "rotated")


def korthikanti_bytes(seq_len: int, batch_size: int, d_model: int, n_head: int) -> int:
    """Korthikanti et al. (2022), eq. 1: bytes of activations per layer of an fp16 GPT
    with dropout and plain attention, ``s b h (34 + 5 a s / h)``; the paper's yardstick,
    to set beside :func:`activation_terms` for our block."""
    s, b, h, a = seq_len, batch_size, d_model, n_head
    return s * b * h * 34 + 5 * a * s * s * b


# --------------------------------------------------------------------------------------
# 3. Activations, measured: what autograd saves


class _Saved:
    """What the pack hook hands autograd: a box we can hold a weak reference to, so that
    tensors saved by graphs that die at once (a detached ``amax``) are not counted."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor):
        self.tensor = tensor


def saved_activation_bytes(fn: Callable[[], object],
                           exclude: Iterable[Tensor] = ()) -> tuple[int, object]:
    """Run ``fn()``; return (the bytes autograd holds for backward afterwards, its
    result).

    Every tensor saved by an autograd node passes through the pack hook of
    ``torch.autograd.graph.saved_tensors_hooks``. Several ops save views of one tensor,
    so we count each storage once (keyed by its address), only while still referenced by
    the graph, and leave out the storages of ``exclude`` (the parameters and buffers:
    they are model state, not activations).
    """
    boxes: list[weakref.ref] = []

    def pack(t: Tensor) -> _Saved:
        box = _Saved(t.detach())  # no grad_fn: a saved output must not keep its node
        boxes.append(weakref.ref(box))
        return box

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
        result = fn()
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}
    for ref in boxes:
        box = ref()
        if box is not None:
            s = box.tensor.untyped_storage()
            if s.data_ptr() not in skip:
                storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values()), result


def measure_activation_bytes(model: GPT, idx: Tensor, targets: Tensor) -> int:
    """Bytes saved for backward by one training forward of ``model`` with the loss."""
    state = [*model.parameters(), *model.buffers()]
    model.train()
    nbytes, (_, loss) = saved_activation_bytes(lambda: model(idx, targets),
                                               exclude=state)
    del loss
    return nbytes


def measure_block_bytes(model: GPT, batch_size: int, seq_len: int,
                        layer: int = 0) -> int:
    """Bytes saved by block ``layer`` alone, fed a random (B, T, C) input."""
    model.train()
    block = model.blocks[layer]
    x = torch.randn(batch_size, seq_len, model.config.d_model, requires_grad=True)
    state = [*model.parameters(), *model.buffers()]
    nbytes, _ = saved_activation_bytes(lambda: block(x, rotary=model.rotary),
                                       exclude=[x, *state])
    return nbytes + x.nbytes  # the input counts (Korthikanti's convention)


def cuda_activation_bytes(model: GPT, idx: Tensor, targets: Tensor) -> int:
    """On a GPU: the peak memory one forward with the loss adds (the saved activations,
    plus the transient peak of the largest op), from
    ``torch.cuda.max_memory_allocated``."""
    if idx.device.type != "cuda":
        raise ValueError("cuda_activation_bytes needs the model and data on a CUDA "
                         "device: move both with .cuda()")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    _, loss = model(idx, targets)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del loss
    return peak - before


# --------------------------------------------------------------------------------------
# 4. Activation checkpointing

CHECKPOINTING = ("none", "block", "attention")


class Checkpointed(nn.Module):
    """``module`` run under ``torch.utils.checkpoint``: its forward keeps only its
    inputs, and the backward runs it again to get the rest. Non-reentrant, the
    recommended mode: it handles keyword arguments and inputs that do not require
    gradients."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return checkpoint(self.module, *args, use_reentrant=False, **kwargs)


def apply_checkpointing(model: GPT, mode: str = "block") -> GPT:
    """Wrap every block (``"block"``) or every block's attention sublayer
    (``"attention"``, selective) in :class:`Checkpointed`, in place; returns ``model``.
    The parameters do not move, so an optimizer built before still holds them; their
    names gain a ``.module`` (:func:`remove_checkpointing` undoes the wrapping, for a
    checkpoint file that a plain model can load)."""
    if mode not in CHECKPOINTING:
        raise ValueError(f"unknown checkpointing mode {mode!r}; choose one of "
                         f"{CHECKPOINTING}")
    for i, block in enumerate(model.blocks):
        if mode == "block" and not isinstance(block, Checkpointed):
            model.blocks[i] = Checkpointed(block)
        elif mode == "attention" and not isinstance(block.attn, Checkpointed):
            block.attn = Checkpointed(block.attn)
    return model


def remove_checkpointing(model: GPT) -> GPT:
    """Undo :func:`apply_checkpointing`, in place; returns ``model``."""
    for i, block in enumerate(model.blocks):
        if isinstance(block, Checkpointed):
            model.blocks[i] = block = block.module
        if isinstance(block.attn, Checkpointed):
            block.attn = block.attn.module
    return model


def recompute_overhead(config: GPTConfig, batch_size: int, seq_len: int, *,
                       mode: str = "block", repeats: int = 5, seed: int = 0) -> float:
    """Training step time with checkpointing over without: the median of ``repeats``
    ratios of forward+backward times (about 1.3 for per-block, a second forward pass).
    A benchmark figure: it depends on the machine and its load."""
    torch.manual_seed(seed)
    plain = GPT(config)
    recomputed = apply_checkpointing(GPT(config), mode)
    idx = torch.randint(0, config.vocab_size, (batch_size, seq_len))

    def step_seconds(model: GPT) -> float:
        start = time.perf_counter()
        _, loss = model(idx, idx)
        loss.backward()
        return time.perf_counter() - start

    step_seconds(plain), step_seconds(recomputed)  # warm-up
    ratios = [step_seconds(recomputed) / step_seconds(plain) for _ in range(repeats)]
    return statistics.median(ratios)
