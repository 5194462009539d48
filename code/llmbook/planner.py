"""Before launching: memory per GPU and step time of each way to split a model.
Chapter 6.

A plan splits ``n`` GPUs as ``dp x tp x pp``: tensor parallelism (Megatron: each weight
matrix split over ``tp`` GPUs of one node), pipeline parallelism (the layers in ``pp``
stages, the batch in ``m`` micro-batches) and data parallelism over the rest, with ZeRO
stage 0-3 sharding the model states over the ``dp`` replicas (stage 3 is FSDP). For each
plan :func:`plan_memory` adds up model states (:mod:`llmbook.memory`) and activations,
and :func:`plan_step_seconds` adds compute (``flops_per_token`` at a given MFU,
stretched by the pipeline bubble ``(p - 1) / (m + p - 1)``) to communication
(:mod:`llmbook.comm`), with no overlap assumed: an upper bound. :func:`rank_plans` says
what fits and what is fastest.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from llmbook.comm import allreduce_seconds
from llmbook.memory import (CHECKPOINTING, PRECISIONS, n_parameters,
                            predict_activation_bytes)
from llmbook.costs import flops_per_token
from llmbook.model import GPTConfig
from llmbook.profiles import PROFILES, Profile


@dataclass(frozen=True)
class Cluster:
    """GPUs and their links. Defaults: H100 SXM nodes of 8 (80 GB, NVLink 4 at 450 GB/s,
    InfiniBand NDR at 50 GB/s per GPU, 989 TFLOP/s dense bf16) at 40% MFU."""

    n_gpus: int = 8
    gpus_per_node: int = 8
    memory_bytes: float = 80e9
    intra_bandwidth: float = 450e9
    inter_bandwidth: float = 50e9
    latency: float = 5e-6
    peak_flops: float = 989e12
    mfu: float = 0.4

    def __post_init__(self) -> None:
        if self.n_gpus < 1 or self.gpus_per_node < 1:
            raise ValueError(f"n_gpus and gpus_per_node must be positive, got "
                             f"{self.n_gpus}, {self.gpus_per_node}")
        if self.n_gpus > self.gpus_per_node and self.n_gpus % self.gpus_per_node:
            raise ValueError(f"n_gpus={self.n_gpus} must be whole nodes of "
                             f"gpus_per_node={self.gpus_per_node}")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"mfu is a fraction of peak in (0, 1], got {self.mfu}")


@dataclass(frozen=True)
class Workload:
    """One optimizer step: ``batch_size`` sequences of ``seq_len`` tokens in all."""

    batch_size: int = 512
    seq_len: int = 2048
    micro_batch_size: int = 1  # sequences per GPU per forward
    precision: str = "bf16-mixed"
    checkpointing: str = "none"  # "none" | "block" | "attention" (llmbook.memory)

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Workload.{name} must be positive, got "
                                 f"{getattr(self, name)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of "
                             f"{sorted(PRECISIONS)}")
        if self.checkpointing not in CHECKPOINTING:
            raise ValueError(f"unknown checkpointing {self.checkpointing!r}; "
                             f"choose one of {CHECKPOINTING}")


@dataclass(frozen=True)
class Plan:
    dp: int
    tp: int = 1
    pp: int = 1
    zero: int = 0  # 0 replicate; 1 shard optimizer; 2 + gradients; 3 + weights (FSDP)

    def __post_init__(self) -> None:
        if min(self.dp, self.tp, self.pp) < 1 or self.zero not in (0, 1, 2, 3):
            raise ValueError(f"need dp, tp, pp >= 1 and zero in 0..3, got {self}")

    def micro_batches(self, work: Workload) -> int:
        """Micro-batches per step per data-parallel replica (gradient accumulation)."""
        per_replica, rest = divmod(work.batch_size, self.dp * work.micro_batch_size)
        if rest or per_replica < 1:
            raise ValueError(f"batch_size={work.batch_size} is not a multiple of dp="
                             f"{self.dp} x micro_batch_size={work.micro_batch_size}")
        return per_replica


def pipeline_bubble(p: int, m: int) -> float:
    """Idle fraction of a GPipe or 1F1B schedule: ``(p - 1) / (m + p - 1)``."""
    if p < 1 or m < 1:
        raise ValueError(f"stages and micro-batches must be positive, got p={p}, m={m}")
    return (p - 1) / (m + p - 1)


def plan_memory(config: GPTConfig, cluster: Cluster, work: Workload,
                plan: Plan) -> dict[str, float]:
    """Bytes per GPU: ``weights``, ``grads``, ``optimizer`` (master + moments),
    ``activations`` and ``total``. Parameters split evenly over ``tp x pp``; ZeRO
    divides what it shards by ``dp``. Activations: ``min(p, m)`` micro-batches in flight
    on the
    first stage (1F1B), divided by ``tp`` (assumes sequence parallelism)."""
    per = PRECISIONS[work.precision]
    n = n_parameters(config) / (plan.tp * plan.pp)
    d = plan.dp
    weights, grads = n * per.weights, n * per.grads
    optimizer = n * (per.master + per.adam_m + per.adam_v)
    if plan.zero >= 1:
        optimizer /= d
    if plan.zero >= 2:
        grads /= d
    if plan.zero >= 3:
        weights /= d
    dtype = {"fp32": "float32", "autocast": "autocast-bfloat16"}.get(work.precision,
                                                                   "bfloat16")
    act = predict_activation_bytes(config, work.micro_batch_size, work.seq_len,
                                   checkpointing=work.checkpointing,
                                   dtype=dtype, kernels="cuda")
    in_flight = min(plan.pp, plan.micro_batches(work))
    layers = act["per_layer"] * config.n_layer / plan.pp * in_flight
    activations = (layers + act["embedding"] + act["head"]) / plan.tp
    return {"weights": weights, "grads": grads, "optimizer": optimizer,
            "activations": activations,
            "total": weights + grads + optimizer + activations}


def _dp_bandwidth(cluster: Cluster, plan: Plan) -> float:
    """DP ranks are the outermost dimension: they share a node only if the whole
    ``dp x tp x pp`` grid fits in one."""
    inside = plan.dp * plan.tp * plan.pp <= cluster.gpus_per_node
    return cluster.intra_bandwidth if inside else cluster.inter_bandwidth


def plan_step_seconds(config: GPTConfig, cluster: Cluster, work: Workload,
                      plan: Plan) -> dict[str, float]:
    """Predicted seconds of one step: ``compute`` (bubble and recompute included),
    ``dp_comm``, ``tp_comm``, ``pp_comm`` and ``total`` (no overlap assumed)."""
    m = plan.micro_batches(work)
    tokens = work.batch_size * work.seq_len
    ideal = flops_per_token(config, work.seq_len) * tokens / (
        cluster.n_gpus * cluster.peak_flops * cluster.mfu)
    recompute = {"none": 1.0, "block": 4 / 3, "attention": 1.0}[work.checkpointing]
    compute = ideal * recompute / (1 - pipeline_bubble(plan.pp, m))
    per = PRECISIONS[work.precision]
    grad_bytes = n_parameters(config) / (plan.tp * plan.pp) * per.grads
    # ZeRO-1/2 replace the all-reduce by a reduce-scatter and an all-gather: the same
    # bytes; ZeRO-3 all-gathers the weights again in backward: 1.5 times (ZeRO paper).
    volume = 1.5 if plan.zero == 3 else 1.0
    dp_comm = volume * allreduce_seconds(grad_bytes, plan.dp,
                                         _dp_bandwidth(cluster, plan), cluster.latency)
    act_bytes = work.micro_batch_size * work.seq_len * config.d_model * 2
    # Megatron: two all-reduces of the activations per layer forward, two backward.
    tp_comm = 4 * config.n_layer / plan.pp * m * allreduce_seconds(
        act_bytes, plan.tp, cluster.intra_bandwidth, cluster.latency)
    pp_link = (cluster.intra_bandwidth if plan.tp * plan.pp <= cluster.gpus_per_node
               else cluster.inter_bandwidth)
    pp_comm = 0.0 if plan.pp == 1 else 2 * m * (act_bytes / plan.tp / pp_link
                                                + cluster.latency)
    return {"compute": compute, "dp_comm": dp_comm, "tp_comm": tp_comm,
            "pp_comm": pp_comm, "total": compute + dp_comm + tp_comm + pp_comm}


def candidate_plans(config: GPTConfig, cluster: Cluster, work: Workload) -> list[Plan]:
    """Every ``dp x tp x pp = n_gpus`` with ``tp`` within a node and dividing the heads,
    ``pp`` dividing the layers, the batch splitting evenly, and ZeRO 0-3 when
    ``dp > 1``."""
    plans = []
    n = cluster.n_gpus
    for tp in range(1, min(n, cluster.gpus_per_node) + 1):
        for pp in range(1, n // tp + 1):
            if n % (tp * pp) or config.n_head % tp or config.n_layer % pp:
                continue
            dp = n // (tp * pp)
            if work.batch_size % (dp * work.micro_batch_size):
                continue
            for zero in range(4 if dp > 1 else 1):
                plans.append(Plan(dp=dp, tp=tp, pp=pp, zero=zero))
    return plans


def rank_plans(config: GPTConfig, cluster: Cluster, work: Workload) -> list[dict]:
    """Every candidate plan with its memory per GPU (GB), whether it fits and its step
    time; those that fit first, fastest first (ties: least memory first)."""
    rows = []
    for plan in candidate_plans(config, cluster, work):
        memory = plan_memory(config, cluster, work, plan)
        seconds = plan_step_seconds(config, cluster, work, plan)
        rows.append({"dp": plan.dp, "tp": plan.tp, "pp": plan.pp, "zero": plan.zero,
                     "memory_GB": memory["total"] / 1e9,
                     "fits": memory["total"] <= cluster.memory_bytes,
                     "step_s": seconds["total"],
                     "bubble": pipeline_bubble(plan.pp, plan.micro_batches(work))})
    return sorted(rows, key=lambda r: (not r["fits"], r["step_s"], r["memory_GB"]))


# --------------------------------------------------------------------------------------
# The book's own gpu edition on one GPU: what each chapter's training costs

# No split of the corpus holds more tokens than the plays have bytes (5.3 MB of Markdown,
# Chapter 1): a bound on what the final evaluation of Chapter 5 reads.
CORPUS_TOKENS_BOUND = 6_000_000


@dataclass(frozen=True)
class RunCost:
    """One training run (or sweep) of a chapter: its FLOPs and its peak memory."""

    chapter: int
    run: str
    tokens: int  # tokens trained on (forward and backward)
    flops: float
    peak_bytes: float  # model states plus the activations of one micro-batch


def _run_cost(chapter: int, run: str, config: GPTConfig, *, steps: int, batch_size: int,
              dtype: str = "float32", eval_tokens: int = 0) -> RunCost:
    """A run of ``GPT(config)``: ``steps`` steps of ``batch_size`` sequences, trained
    under ``dtype`` (autocast keeps float32 weights: 16 bytes per parameter either way),
    plus ``eval_tokens`` scored forward only."""
    seq_len = config.block_size
    tokens = steps * batch_size * seq_len
    flops = (tokens * flops_per_token(config, seq_len)
             + eval_tokens * flops_per_token(config, seq_len, training=False))
    precision = "autocast" if dtype == "bfloat16" else "fp32"
    act_dtype = "autocast-bfloat16" if dtype == "bfloat16" else "float32"
    states = PRECISIONS[precision].total * n_parameters(config)
    act = predict_activation_bytes(config, batch_size, seq_len, dtype=act_dtype,
                                   kernels="cuda")["total"]
    return RunCost(chapter, run, tokens, flops, states + act)


def _attention_only_cost(s) -> RunCost:
    """Chapter 3's one-layer attention-only model (``llmbook.attention.AttentionOnlyLM``)
    on bytes: embeddings, q/k/v/output projections and the head; no MLP, float32."""
    C, T, V = s.lm_d_model, s.lm_block_size, 256
    matmul = 4 * C * C + C * V  # q, k, v, output projection; the head
    per_token = 6 * matmul + 12 * T * C
    tokens = s.lm_steps * s.lm_batch_size * T
    params = (V + T) * C + 4 * (C * C + C) + C * V + V
    n = s.lm_batch_size * T
    # saved for backward, float32: embeddings' sum, q, k, v, the T x T probabilities per
    # head, the attention output, the logits and their log-softmax
    act = 4 * n * (6 * C + s.lm_n_heads * T + 2 * V)
    return RunCost(3, "attention-only model", tokens, tokens * per_token,
                   PRECISIONS["fp32"].total * params + act)


def _attention_sweep_cost(s) -> RunCost:
    """Chapter 3's time and memory sweep: three attention implementations, forward and
    backward, at each length (``llmbook.flash.measure_attention_cost``: batch 1, 4 heads
    of 64), ``cost_repeats`` timed runs, a warm-up and a memory run each. Memory: the naive
    version's ``T x T`` matrices, bounded by six of them in float32 at the longest T."""
    H, hd = 4, 64
    runs = 3 * (s.cost_repeats + 2)
    flops = sum(runs * 3 * 4 * H * T * T * hd for T in s.cost_seq_lens)
    T = s.cost_seq_lens[-1]
    return RunCost(3, "attention cost sweep", 0, flops, 6 * H * T * T * 4)


def gpu_book_costs(profile: Profile | None = None, *,
                   vocab_size: int | None = None) -> list[RunCost]:
    """Every GPU training run of Chapters 3 to 5 under ``profile`` (default the ``gpu``
    profile), from its settings in :mod:`llmbook.profiles` and the formulas of
    :mod:`llmbook.costs` and :mod:`llmbook.memory`. ``vocab_size`` is the book
    tokenizer's (default ``profile.tokenizer.vocab_size``)."""
    p = PROFILES["gpu"] if profile is None else profile
    V = p.tokenizer.vocab_size if vocab_size is None else vocab_size
    m, t, d = p.model, p.train, p.train_demos
    byte_model = GPTConfig.preset(m.preset, vocab_size=256, dropout=0.0)  # Chapter 4
    norm_model = dataclasses.replace(byte_model, n_layer=m.norm_layers,
                                     block_size=m.norm_block_size)
    book = GPTConfig.preset(m.preset, vocab_size=V, dropout=t.dropout)  # Chapter 5
    small = dataclasses.replace(book, n_layer=d.overfit_layers, d_model=d.overfit_width,
                                dropout=d.overfit_dropout)
    evals = t.steps // t.eval_interval + 1
    final_eval = 2 * CORPUS_TOKENS_BOUND  # validation and test, read in full (a bound)
    of_evals = 10 * 2 * 4096  # ten evaluations of 4096 tokens of each split
    return [
        _attention_only_cost(p.attention),
        _attention_sweep_cost(p.attention),
        _run_cost(4, "pre- and post-norm", norm_model, steps=2 * m.norm_steps,
                  batch_size=m.norm_batch_size),
        _run_cost(4, "overfitting one batch", byte_model, steps=m.overfit_steps,
                  batch_size=m.overfit_batch_size),
        _run_cost(5, "the book's model", book, steps=t.steps, batch_size=t.batch_size
                  * t.grad_accum, dtype=t.dtype,
                  eval_tokens=evals * 2 * t.eval_tokens + final_eval),
        _run_cost(5, "learning-rate sweep", book,
                  steps=len(d.lr_sweep_factors) * d.lr_sweep_steps,
                  batch_size=t.batch_size * t.grad_accum, dtype=t.dtype,
                  eval_tokens=len(d.lr_sweep_factors) * (
                      (d.lr_sweep_steps // t.eval_interval + 1) * 2 * t.eval_tokens
                      + final_eval)),
        _run_cost(5, "checkpoint and resume", small, steps=20 + 20,
                  batch_size=d.overfit_batch_size, dtype=t.dtype),
        _run_cost(5, "overfitting, with and without dropout", small,
                  steps=2 * d.overfit_steps, batch_size=d.overfit_batch_size,
                  dtype=t.dtype, eval_tokens=2 * of_evals),
    ]


def gpu_book_plan(profile: Profile | None = None, cluster: Cluster | None = None, *,
                  vocab_size: int | None = None) -> list[dict]:
    """:func:`gpu_book_costs` on one GPU (default: an H100 at 40% of 989 TFLOP/s): per
    run, ``chapter``, ``run``, ``tokens``, ``pflop``, ``seconds`` and ``peak_GB``. GPU
    time only: a chapter's CPU work (tokenizer training, Python overhead) is not in it."""
    gpu = Cluster(n_gpus=1, gpus_per_node=1) if cluster is None else cluster
    achieved = gpu.peak_flops * gpu.mfu
    return [{"chapter": c.chapter, "run": c.run, "tokens": c.tokens,
             "pflop": c.flops / 1e15, "seconds": c.flops / achieved,
             "peak_GB": c.peak_bytes / 1e9}
            for c in gpu_book_costs(profile, vocab_size=vocab_size)]


def gpu_plan_markdown(rows: list[dict] | None = None,
                      cluster: Cluster | None = None) -> str:
    """:func:`gpu_book_plan` as a Markdown table with a total row (the how-to-run page)."""
    gpu = Cluster(n_gpus=1, gpus_per_node=1) if cluster is None else cluster
    rows = gpu_book_plan(cluster=gpu) if rows is None else rows
    lines = ["| Chapter | Run | Tokens trained | PFLOP | Seconds | Peak memory (GB) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['chapter']} | {r['run']} | {r['tokens']:,} | "
                     f"{r['pflop']:.3f} | {r['seconds']:.1f} | {r['peak_GB']:.2f} |")
    total = sum(r["seconds"] for r in rows)
    peak = max(r["peak_GB"] for r in rows)
    lines.append(f"| all | at {gpu.mfu:.0%} of {gpu.peak_flops / 1e12:.0f} TFLOP/s | | "
                 f"{sum(r['pflop'] for r in rows):.3f} | {total:.1f} | {peak:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmbook.planner",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-plan", action="store_true", required=True,
                        help="print the gpu edition's predicted cost on one H100 "
                             "(Markdown)")
    parser.parse_args(argv)
    print(gpu_plan_markdown(), end="")


if __name__ == "__main__":
    main()
