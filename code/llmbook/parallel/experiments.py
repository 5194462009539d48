"""Chapter 6's parallel experiments, as functions that run on every rank.

Each ``*_worker(rank, world_size, ...)`` trains a tiny GPT on its share of the same
batches and returns its parameters (plus what it measured), for
:func:`llmbook.parallel.dist.spawn`; :func:`train_reference` trains the same model on
the whole batch in one process. The chapter and the tests compare the two.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import Tensor, nn

from llmbook.attention import CausalSelfAttention
from llmbook.layers import MLP, GatedMLP, RotaryEmbedding
from llmbook.model import GPT, GPTConfig
from llmbook.optim import clip_grad_norm, parameter_groups
from llmbook.parallel.ddp import (
    REDUCTIONS,
    DataParallel,
    apply_fsdp,
)
from llmbook.parallel.zero import ZeroAdamW, adamw_state_bytes

# No biases: a key bias gets a zero gradient in exact arithmetic (softmax ignores a
# constant added to every score) and rounding noise in practice, which Adam blows up to
# full-size steps of noise; the book's models have none.
TINY = GPTConfig(
    vocab_size=64,
    block_size=16,
    n_layer=2,
    n_head=4,
    d_model=32,
    dropout=0.0,
    bias=False,
)
# Adam moves an element by lr * g / (|g| + eps), whatever the size of g, so where g is
# near zero its rounding noise (~1e-10 here: float32 sums of terms ~1e-3, added in
# another order by another process layout) moves the weight by up to lr * noise / eps
# per step. With eps = 1e-8 one element of ~30k, whose gradient was 3e-8, differed by
# 7e-7 after three steps; eps = 1e-6 bounds that at ~1e-7 per step at lr 1e-3, well
# inside the 1e-6 the tests allow between parallel and single-process runs.
LR, EPS, WEIGHT_DECAY, BATCH, SEQ = 1e-3, 1e-6, 0.1, 4, 16


def tiny_gpt(seed: int = 0, config: GPTConfig = TINY) -> GPT:
    torch.manual_seed(seed)
    return GPT(config)


def batches(steps: int, seed: int = 1234) -> list[tuple[Tensor, Tensor]]:
    """``steps`` global batches of (inputs, targets), each ``(BATCH, SEQ)``, the same on
    every rank (each rank then takes its rows)."""
    gen = torch.Generator().manual_seed(seed)
    data = torch.randint(0, TINY.vocab_size, (steps, BATCH, SEQ + 1), generator=gen)
    return [(d[:, :-1], d[:, 1:]) for d in data]


def my_rows(tensor: Tensor, rank: int, world: int) -> Tensor:
    """This rank's equal share of the batch's rows."""
    if tensor.shape[0] % world:
        raise ValueError(
            f"batch of {tensor.shape[0]} rows does not split over {world} ranks"
        )
    return tensor.chunk(world)[rank]


def make_adamw(model: nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        parameter_groups(model, WEIGHT_DECAY), lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY
    )


def full_state(model: nn.Module) -> dict[str, Tensor]:
    """Parameters by name as plain CPU tensors (FSDP's sharded DTensors gathered)."""
    out = {}
    for name, p in model.named_parameters():
        p = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = p.detach().clone()
    return out


def train_reference(
    steps: int,
    *,
    seed: int = 0,
    max_norm: float | None = None,
    freeze: bool = False,
) -> tuple[dict[str, Tensor], list[float], list[float]]:
    """One process, the whole batch: the parameters every parallel run must reproduce,
    and the gradient norm and loss of each step."""
    model = tiny_gpt(seed)
    if freeze:
        model.norm_f.weight.requires_grad_(False)
    optimizer = make_adamw(model)
    norms, losses = [], []
    for x, y in batches(steps):
        _, loss = model(x, y)
        loss.backward()
        norms.append(float(clip_grad_norm(model.parameters(), max_norm or 1e30)))
        losses.append(loss.item())
        optimizer.step()
        optimizer.zero_grad()
    return full_state(model), norms, losses


def ddp_worker(rank: int, world: int, steps: int) -> dict:
    """Our DataParallel (ranks seeded differently, a frozen norm, small buckets),
    torch's DistributedDataParallel, and ours with two accumulation micro-batches per
    step."""
    results = {}
    for variant in ("ours", "torch", "accumulate"):
        model = tiny_gpt(seed=100 + rank)  # a different start on every rank
        model.norm_f.weight.requires_grad_(False)
        if variant == "torch":
            wrapped = nn.parallel.DistributedDataParallel(model)
        else:
            wrapped = DataParallel(model, bucket_bytes=16 * 1024)
        optimizer = make_adamw(model)
        for x, y in batches(steps):
            x, y = my_rows(x, rank, world), my_rows(y, rank, world)
            if variant == "accumulate":
                (x0, x1), (y0, y1) = x.chunk(2), y.chunk(2)
                with wrapped.no_sync():
                    (wrapped(x0, y0)[1] / 2).backward()
                (wrapped(x1, y1)[1] / 2).backward()
            else:
                wrapped(x, y)[1].backward()
            optimizer.step()
            optimizer.zero_grad()
        results[variant] = full_state(model)
        if variant == "ours":
            results["buckets"] = len(wrapped.buckets)
            results["overlapped"] = wrapped.overlapped
            results["frozen_grad_is_none"] = model.norm_f.weight.grad is None
    results["sum_minus_world_mean"] = _sum_versus_mean(rank, world)
    return results


def _sum_versus_mean(rank: int, world: int) -> float:
    """The largest gap between ``reduction="sum"`` gradients and world x ``"mean"``."""
    grads = {}
    for reduction in REDUCTIONS:
        model = tiny_gpt(0)
        wrapped = DataParallel(model, reduction=reduction)
        x, y = batches(1)[0]
        wrapped(my_rows(x, rank, world), my_rows(y, rank, world))[1].backward()
        grads[reduction] = [p.grad for p in model.parameters()]
    pairs = zip(grads["sum"], grads["mean"])
    return max((s - world * m).abs().max().item() for s, m in pairs)


def zero_worker(rank: int, world: int, steps: int) -> dict:
    """ZeRO-1: our DataParallel for the gradients, ZeroAdamW for the update."""
    model = tiny_gpt(0)
    wrapped = DataParallel(model)
    optimizer = ZeroAdamW(
        parameter_groups(model, WEIGHT_DECAY), lr=LR, eps=EPS, weight_decay=WEIGHT_DECAY
    )
    for x, y in batches(steps):
        wrapped(my_rows(x, rank, world), my_rows(y, rank, world))[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    n_params = sum(p.numel() for p in optimizer.params)
    return {
        "params": full_state(model),
        "state_bytes": optimizer.state_bytes(),
        "predicted_bytes": adamw_state_bytes(n_params, world),
        "unsharded_bytes": adamw_state_bytes(n_params),
        "n_params": n_params,
    }


def fsdp_worker(rank: int, world: int, steps: int, max_norm: float) -> dict:
    """FSDP2 on every block and the root, clipping with
    :func:`llmbook.optim.clip_grad_norm`;
    torch's norm of the same DTensor gradients alongside."""
    model = apply_fsdp(tiny_gpt(0))
    optimizer = make_adamw(model)
    ours, theirs = [], []
    for x, y in batches(steps):
        model(my_rows(x, rank, world), my_rows(y, rank, world))[1].backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        torch_norm = torch.nn.utils.get_total_norm(grads)
        theirs.append(
            float(
                torch_norm.full_tensor()
                if hasattr(torch_norm, "full_tensor")
                else torch_norm
            )
        )
        ours.append(float(clip_grad_norm(model.parameters(), max_norm)))
        optimizer.step()
        optimizer.zero_grad()
    sharded = [type(p).__name__ for p in model.parameters()]
    return {
        "params": full_state(model),
        "norms": ours,
        "torch_norms": theirs,
        "param_types": sorted(set(sharded)),
        "world": dist.get_world_size(),
    }


def data_parallel_worker(
    rank: int, world: int, steps: int, zero_steps: int, max_norm: float
) -> dict:
    """All three experiments in one launch (starting processes costs more than running
    them): :func:`ddp_worker`, :func:`zero_worker`, :func:`fsdp_worker`."""
    return {
        "ddp": ddp_worker(rank, world, steps),
        "zero": zero_worker(rank, world, zero_steps),
        "fsdp": fsdp_worker(rank, world, steps, max_norm),
        "fsdp_bf16": fsdp_bf16_worker(rank, world, steps, max_norm),
    }


def fsdp_bf16_worker(rank: int, world: int, steps: int, max_norm: float) -> dict:
    """FSDP2 computing in bfloat16: parameters cast to bf16 for forward and backward,
    gradients reduced and the update applied in float32 (``MixedPrecisionPolicy``).
    Returns the global batch's loss and the gradient norm at each step."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16, reduce_dtype=torch.float32
    )
    model = apply_fsdp(tiny_gpt(0), mp_policy=policy)
    optimizer = make_adamw(model)
    losses, norms = [], []
    for x, y in batches(steps):
        _, loss = model(my_rows(x, rank, world), my_rows(y, rank, world))
        loss.backward()
        mean_loss = loss.detach().float().clone()
        dist.all_reduce(mean_loss)  # each rank's loss is over its half of the batch
        losses.append(mean_loss.item() / world)
        norms.append(float(clip_grad_norm(model.parameters(), max_norm)))
        optimizer.step()
        optimizer.zero_grad()
    return {"losses": losses, "norms": norms}


def failing_worker(rank: int, world: int, how: str) -> None:
    """For testing :func:`~llmbook.parallel.dist.spawn`: rank 1 raises (``"fail"``), or
    rank 0 waits for a message rank 1 never sends (``"hang"``). Rank 1 stays alive while it
    does not send: a rank that exits closes its connections, and rank 0's receive then
    fails at once instead of hanging."""
    if how == "fail" and rank == 1:
        raise ValueError("rank 1 fails on purpose")
    if how == "hang":
        if rank == 0:
            dist.recv(torch.zeros(1), src=1)
        else:
            time.sleep(3600)  # spawn's timeout stops it


# --------------------------------------------------------------------------------------
# Tensor parallelism: one MLP, one gated MLP, one attention block, split over the ranks

TP_CASES = ("mlp", "gated", "attention")


def tp_case(case: str) -> tuple[nn.Module, nn.Module | None]:
    """The single-process module of ``case`` (the same on every rank: a fixed seed) and
    the rotary embedding it is called with (attention only: grouped heads, biases,
    RoPE)."""
    torch.manual_seed(7)
    if case == "mlp":
        return MLP(32, 64, "gelu", bias=True), None
    if case == "gated":
        return GatedMLP(32, 48, "swiglu", bias=True), None
    if case == "attention":
        return CausalSelfAttention(32, 4, 2, bias=True), RotaryEmbedding(8, SEQ)
    raise ValueError(f"unknown case {case!r}; choose one of {TP_CASES}")


def tp_inputs() -> tuple[Tensor, Tensor]:
    """An input ``(2, SEQ, 32)`` and the gradient ``dL/dy`` to send back through it."""
    gen = torch.Generator().manual_seed(8)
    return torch.randn(2, SEQ, 32, generator=gen), torch.randn(
        2, SEQ, 32, generator=gen
    )


def tp_shard_spec(module: nn.Module) -> dict[str, tuple[list[int] | None, int | None]]:
    """For each parameter of the tensor-parallel version of ``module``: how to cut the
    single-process parameter of the same name, ``(parts, dim)``; ``dim`` None: whole."""
    if isinstance(module, CausalSelfAttention):
        column, hd = "qkv", module.head_dim
        parts = [module.n_heads * hd, module.n_kv_heads * hd, module.n_kv_heads * hd]
    else:
        column = "fc"
        d_ff = module.proj.in_features
        parts = [d_ff, d_ff] if isinstance(module, GatedMLP) else None
    return {
        f"{column}.weight": (parts, 0),
        f"{column}.bias": (parts, 0),
        "proj.weight": (None, 1),
        "proj.bias": (None, None),
    }


def _run_block(block: nn.Module, rotary: nn.Module | None) -> dict:
    x, dy = tp_inputs()
    x.requires_grad_()
    y = block(x) if rotary is None else block(x, rotary=rotary)
    (y * dy).sum().backward()
    grads = {}
    for name, p in block.named_parameters():
        g = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
        grads[name] = g.detach().clone()
    return {"y": y.detach().clone(), "x_grad": x.grad.clone(), "grads": grads}


def tensor_parallel_worker(rank: int, world: int) -> dict:
    """Each case split from scratch and with ``parallelize_module``; plus the gated MLP
    split naively (one contiguous cut of the fused ``[gate|up]``), to show why not."""
    from torch.distributed.device_mesh import init_device_mesh

    from llmbook.parallel import tensor as tp

    mesh = init_device_mesh("cpu", (world,))
    out = {}
    for case in TP_CASES:
        module, rotary = tp_case(case)
        if case == "attention":
            scratch = tp.TensorParallelAttention.from_attention(module)
            library = tp.parallelize_attention(module, mesh)
        else:
            scratch = tp.TensorParallelMLP.from_mlp(module)
            library = tp.parallelize_mlp(module, mesh)
        out[case, "scratch"] = _run_block(scratch, rotary)
        out[case, "torch"] = _run_block(library, rotary)
    module, _ = tp_case("gated")
    naive = tp.TensorParallelMLP(
        tp.ColumnParallelLinear.from_linear(module.fc),
        tp.RowParallelLinear.from_linear(module.proj),
        "swiglu",
        gated=True,
    )
    out["gated", "naive"] = _run_block(naive, None)
    return out


# --------------------------------------------------------------------------------------
# Pipeline parallelism: the tiny GPT cut in two


def pipeline_worker(rank: int, world: int, runs: list[tuple[str, int]]) -> dict:
    """For each ``(schedule, n_micro)``: this rank's stage of the tiny GPT runs one step
    on the first batch; returns the loss (last stage), the stage's gradients and its
    peak of held micro-batches."""
    from llmbook.parallel.pipeline import PipelineStage, run_pipeline

    out = {}
    x, y = batches(1)[0]
    for schedule, n_micro in runs:
        stage = PipelineStage(tiny_gpt(0), rank, world)
        loss, peak = run_pipeline(stage, x, y, n_micro, schedule)
        grads = {n: g.detach().clone() for n, g in stage.gradients().items()}
        out[schedule, n_micro] = {"loss": loss, "grads": grads, "peak": peak}
    return out


def trainer_worker(rank: int, world: int, parallel: str, config, token_file: str,
                   checkpoint: str | None, stop: int | None) -> dict:
    """The book's Trainer on ``world`` processes, wrapped as the command line wraps it
    (:func:`llmbook.train.distributed.data_parallel_wrap`), on a token file's windows
    sharded by rank. With ``stop`` it trains to that step and writes ``checkpoint``; with
    ``checkpoint`` alone it resumes from it and finishes the run, leaving the file as it
    was (other runs resume from it too). Returns the whole parameters (gathered under
    FSDP) and the log."""
    from llmbook.batches import BatchStream
    from llmbook.data import TokenFile
    from llmbook.train import Trainer
    from llmbook.train.distributed import Launch, data_parallel_wrap, model_state

    s = config.settings
    stream = BatchStream(TokenFile(token_file), config.model.block_size, s.batch_size,
                         seed=config.seed, rank=rank, world_size=world,
                         accum=s.grad_accum)
    launch = Launch(rank, world, rank, torch.device("cpu"), "gloo")
    wrap = data_parallel_wrap(parallel, launch) if world > 1 else None
    trainer = Trainer(config, stream, rank=rank, world_size=world, wrap=wrap)
    if checkpoint is not None and stop is None:
        trainer.resume(checkpoint)
        trainer.fit()
    else:
        trainer.fit(until=stop, checkpoint_path=checkpoint)
    params = {k: v.detach().cpu().clone() for k, v in model_state(trainer.model).items()}
    log = [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")}
           for r in trainer.log]
    return {"params": params, "log": log}


def trainer_runs(rank: int, world: int, runs: list[tuple]) -> list[dict]:
    """:func:`trainer_worker` for each ``(parallel, config, token_file, checkpoint,
    stop)`` in turn, in one launch (starting processes costs more than the runs)."""
    return [trainer_worker(rank, world, *run) for run in runs]


def ddp_timing_worker(rank: int, world: int, config: GPTConfig, batch_size: int,
                      steps: int) -> dict:
    """Median seconds of a training step (forward, backward with the gradient all-reduce,
    AdamW) of ``GPT(config)`` on ``batch_size`` sequences per rank: our
    :class:`DataParallel` against ``DistributedDataParallel``, alternated step by step
    so that a change in the machine's load hits both alike. With ``world == 1``, the
    plain model (the baseline of scaling efficiency)."""
    import statistics
    import time

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(rank)
    x = torch.randint(0, config.vocab_size, (batch_size, config.block_size), generator=gen)
    variants = {"plain": GPT(config)} if world == 1 else {
        "ours": DataParallel(GPT(config)),
        "torch": nn.parallel.DistributedDataParallel(GPT(config))}
    optimizers = {k: make_adamw(m) for k, m in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for step in range(steps + 1):  # the first step warms up and is not counted
        for name, model in variants.items():
            if world > 1:
                dist.barrier()  # start together: a step is as slow as its slowest rank
            start = time.perf_counter()
            model(x, x)[1].backward()
            optimizers[name].step()
            optimizers[name].zero_grad()
            if step:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def chapter_worker(rank: int, world: int, steps: int, zero_steps: int, max_norm: float,
                   pipeline_runs: list[tuple[str, int]]) -> dict:
    """Chapter 6's multi-process comparisons in one launch: data parallelism, ZeRO-1 and
    FSDP2 (:func:`data_parallel_worker`), tensor parallelism
    (:func:`tensor_parallel_worker`) and the two-stage pipeline
    (:func:`pipeline_worker`)."""
    return {"data": data_parallel_worker(rank, world, steps, zero_steps, max_norm),
            "tensor": tensor_parallel_worker(rank, world),
            "pipeline": pipeline_worker(rank, world, pipeline_runs)}
