"""Benchmark for llmbook.model (Chapter 4): training throughput against PyTorch's own transformer
layers, and generation with and without the KV cache. Prints one JSON object.

1. Training step (forward, backward, AdamW) tokens per second on CPU: our GPT, configured GPT-2
   style, against a model of exactly the same shape whose blocks are
   ``torch.nn.TransformerEncoderLayer`` (pre-norm, GELU, causal mask). Same embeddings, final norm
   and tied head, same weights, same batches; the two are timed in alternating rounds so that load
   from other processes hits both alike. Target: ours / torch >= 0.95.
2. Generation of 256 new tokens, greedy, batch 1, with the KV cache against without (re-reading
   the prefix at every step); the two must produce the same tokens. Decoding one token is a chain
   of operations too small to share between cores, so by default it runs on one thread
   (``--decode-threads``): the comparison then counts work, not thread scheduling, which on a
   busy machine can cost more than the work itself.

Usage: ``python benchmarks/model.py [--quick] [--threads N] [--decode-threads N] [--out FILE]``;
``--quick`` runs in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmbook.artifacts import atomic_write_text
from llmbook.generate import generate
from llmbook.model import GPT, GPTConfig

GPT2_STYLE = dict(norm="layernorm", activation="gelu", pos_encoding="learned", bias=True, tie_weights=True,
                  mlp_multiple_of=1, dropout=0.0)


class TorchLayersGPT(nn.Module):
    """The same GPT-2-style model with its blocks from ``torch.nn.TransformerEncoderLayer``: the reference.

    :meth:`copy_from` loads a :class:`GPT`'s weights, so the two compute the same function from the same
    starting point (the initialisation matters for speed too: a badly scaled one fills the gradients with
    subnormal floats, which CPUs process many times slower).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        C = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, C)
        self.pos_emb = nn.Parameter(torch.randn(config.block_size, C) * 0.02)
        layer = nn.TransformerEncoderLayer(
            C, config.n_head, dim_feedforward=config.d_ff, dropout=0.0, activation="gelu",
            layer_norm_eps=config.norm_eps, batch_first=True, norm_first=True, bias=config.bias,
        )
        self.encoder = nn.TransformerEncoder(layer, config.n_layer, enable_nested_tensor=False)
        self.norm_f = nn.LayerNorm(C, eps=config.norm_eps)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight

    @torch.no_grad()
    def copy_from(self, gpt: GPT) -> None:
        self.tok_emb.weight.copy_(gpt.tok_emb.weight)
        self.pos_emb.copy_(gpt.pos_emb.weight)
        for layer, block in zip(self.encoder.layers, gpt.blocks):
            pairs = [(layer.norm1, block.norm1), (layer.self_attn.out_proj, block.attn.proj),
                     (layer.norm2, block.norm2), (layer.linear1, block.mlp.fc), (layer.linear2, block.mlp.proj)]
            for theirs, ours in pairs:
                theirs.weight.copy_(ours.weight)
                theirs.bias.copy_(ours.bias)
            # Both lay out the fused input projection as [queries; keys; values], heads contiguous within each.
            layer.self_attn.in_proj_weight.copy_(block.attn.qkv.weight)
            layer.self_attn.in_proj_bias.copy_(block.attn.qkv.bias)
        self.norm_f.weight.copy_(gpt.norm_f.weight)
        self.norm_f.bias.copy_(gpt.norm_f.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb[:T]
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)
        x = self.norm_f(self.encoder(x, mask=mask, is_causal=True))
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def training_throughput(config: GPTConfig, batch_size: int, rounds: int, steps: int) -> dict:
    torch.manual_seed(0)
    models = {"ours": GPT(config), "torch": TorchLayersGPT(config)}
    models["torch"].copy_from(models["ours"])
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    if n_params["ours"] != n_params["torch"]:
        raise RuntimeError(f"the two models differ in size: {n_params}")
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, config.vocab_size, (batch_size, config.block_size + 1), generator=gen)
    x, y = idx[:, :-1], idx[:, 1:]
    with torch.no_grad():  # same shape, same weights: the same function
        gap = (models["ours"](x)[0] - models["torch"](x, y)[0]).abs().max().item()
    if gap > 1e-4:
        raise RuntimeError(f"the two models disagree (max logit difference {gap:.2e}): not a fair comparison")
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}

    def step(name: str) -> None:
        _, loss = models[name](x, y)
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    for name in models:  # warm-up: allocator, kernels, optimizer state
        step(name)
        step(name)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for r in range(rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(name)
            seconds[name].append((time.perf_counter() - t0) / steps)
    tokens = batch_size * config.block_size
    tps = {name: tokens / statistics.median(s) for name, s in seconds.items()}
    return {
        "shape": dict(n_layer=config.n_layer, n_head=config.n_head, d_model=config.d_model,
                      block_size=config.block_size, vocab_size=config.vocab_size, batch_size=batch_size),
        "parameters": n_params["ours"],
        "max_logit_difference": float(f"{gap:.1e}"),
        "ours_tokens_per_s": round(tps["ours"], 1),
        "torch_layers_tokens_per_s": round(tps["torch"], 1),
        "ratio": round(tps["ours"] / tps["torch"], 3),
        "rounds": rounds,
        "steps_per_round": steps,
    }


def generation_throughput(config: GPTConfig, prompt_len: int, new_tokens: int, repeats: int,
                          threads: int) -> dict:
    training_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _generation_throughput(config, prompt_len, new_tokens, repeats) | {"threads": threads}
    finally:
        torch.set_num_threads(training_threads)


def _generation_throughput(config: GPTConfig, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = GPT(config).eval()
    prompt = torch.randint(0, config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    outputs, seconds = {}, {"cached": [], "uncached": []}
    for _ in range(repeats):
        for name, use_cache in (("cached", True), ("uncached", False)):
            t0 = time.perf_counter()
            outputs[name] = generate(model, prompt, new_tokens, temperature=0, use_cache=use_cache)
            seconds[name].append(time.perf_counter() - t0)
    tps = {name: new_tokens / min(s) for name, s in seconds.items()}
    return {
        "preset_shape": dict(n_layer=config.n_layer, d_model=config.d_model, block_size=config.block_size,
                             vocab_size=config.vocab_size),
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
        "cached_tokens_per_s": round(tps["cached"], 1),
        "uncached_tokens_per_s": round(tps["uncached"], 1),
        "speedup": round(tps["cached"] / tps["uncached"], 2),
        "identical_tokens": bool(torch.equal(outputs["cached"], outputs["uncached"])),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, well under a minute")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for training steps (default: torch's)")
    parser.add_argument("--decode-threads", type=int, default=1,
                        help="torch CPU threads for the generation comparison (default: 1)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.quick:  # the book-cpu shape
        train_config = GPTConfig.preset("book-cpu", vocab_size=4096, **GPT2_STYLE)
        train = training_throughput(train_config, batch_size=16, rounds=5, steps=2)
        gen_config = GPTConfig.preset("book-cpu", vocab_size=4096, block_size=320)
        gen = generation_throughput(gen_config, prompt_len=32, new_tokens=256, repeats=1,
                                    threads=args.decode_threads)
    else:  # the book-gpu shape
        train_config = GPTConfig.preset("book-gpu", vocab_size=4096, block_size=256, **GPT2_STYLE)
        train = training_throughput(train_config, batch_size=8, rounds=7, steps=2)
        gen_config = GPTConfig.preset("book-gpu", vocab_size=4096, block_size=512, dropout=0.0)
        gen = generation_throughput(gen_config, prompt_len=32, new_tokens=256, repeats=2,
                                    threads=args.decode_threads)

    result = {
        "benchmark": "model",
        "quick": args.quick,
        "device": "cpu",
        "training_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "training_step": train,
        "training_target_met": train["ratio"] >= 0.95,
        "generation": gen,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
