"""Pipeline parallelism: consecutive layers on consecutive ranks, the batch cut into
micro-batches that flow through them. Chapter 6.

A schedule is, for each stage, the order in which it runs forward (``"F"``) and backward
(``"B"``) passes of the micro-batches. **GPipe** (Huang et al., 2019) runs all forwards,
then all backwards: each stage holds the activations of all ``m`` micro-batches.
**1F1B** (PipeDream-Flush, Narayanan et al., 2021) starts backwards as soon as it can
and then alternates one forward, one backward: stage ``s`` of ``p`` holds at most
``p - s``. Both leave every stage idle for the same fraction of the step, the *bubble*::

    bubble = (p - 1) / (m + p - 1)

:func:`simulate` plays a schedule out step by step and measures it; :func:`run_pipeline`
runs the same schedule on real processes, sending activations forward and gradients
back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from llmbook.model import GPT


@dataclass(frozen=True)
class Event:
    """One pass of one micro-batch on one stage: it starts at ``time`` and takes
    ``duration`` (in units of one stage's forward time)."""

    time: int
    stage: int
    op: str  # "F" (forward) or "B" (backward)
    microbatch: int
    duration: int


def _check(n_stages: int, n_micro: int, stage: int) -> None:
    if n_stages < 1 or n_micro < 1:
        raise ValueError(
            f"need at least one stage and one micro-batch, got {n_stages} "
            f"stages and {n_micro} micro-batches"
        )
    if not 0 <= stage < n_stages:
        raise ValueError(f"stage {stage} is outside 0..{n_stages - 1}")


def gpipe_order(n_stages: int, n_micro: int, stage: int) -> list[tuple[str, int]]:
    """GPipe: every forward, then every backward (in reverse, so the last micro-batch,
    whose gradient arrives first, goes first)."""
    _check(n_stages, n_micro, stage)
    return [("F", i) for i in range(n_micro)] + [
        ("B", i) for i in reversed(range(n_micro))
    ]


def one_f_one_b_order(n_stages: int, n_micro: int, stage: int) -> list[tuple[str, int]]:
    """1F1B: ``p - s - 1`` warm-up forwards, then alternate one forward and one
    backward, then the remaining backwards."""
    _check(n_stages, n_micro, stage)
    warmup = min(n_stages - stage - 1, n_micro)
    order = [("F", i) for i in range(warmup)]
    for i in range(n_micro - warmup):
        order += [("F", warmup + i), ("B", i)]
    order += [("B", i) for i in range(n_micro - warmup, n_micro)]
    return order


SCHEDULES: dict[str, Callable[[int, int, int], list[tuple[str, int]]]] = {
    "gpipe": gpipe_order,
    "1f1b": one_f_one_b_order,
}


def _schedule(name: str) -> Callable[[int, int, int], list[tuple[str, int]]]:
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}"
        )
    return SCHEDULES[name]


def simulate(
    schedule: str,
    n_stages: int,
    n_micro: int,
    *,
    forward_time: int = 1,
    backward_time: int = 2,
) -> list[Event]:
    """Play ``schedule`` out: each stage runs its passes in order, each as soon as its
    stage is free and its input is ready (a forward needs the previous stage's forward
    of the same micro-batch, a backward the next stage's backward). Communication is
    free here. Returns the events sorted by (time, stage)."""
    if forward_time < 1 or backward_time < 1:
        raise ValueError("forward_time and backward_time must be positive integers")
    orders = [_schedule(schedule)(n_stages, n_micro, s) for s in range(n_stages)]
    finish: dict[tuple[str, int, int], int] = {}
    free, position, events = [0] * n_stages, [0] * n_stages, []
    while any(position[s] < len(orders[s]) for s in range(n_stages)):
        progressed = False
        for s in range(n_stages):
            while position[s] < len(orders[s]):
                op, i = orders[s][position[s]]
                needs = [("F", s - 1, i)] if op == "F" and s > 0 else []
                if op == "B":
                    needs = [("F", s, i)] + (
                        [("B", s + 1, i)] if s < n_stages - 1 else []
                    )
                if any(need not in finish for need in needs):
                    break  # waiting for another stage
                start = max([free[s]] + [finish[need] for need in needs])
                duration = forward_time if op == "F" else backward_time
                finish[op, s, i] = free[s] = start + duration
                events.append(Event(start, s, op, i, duration))
                position[s] += 1
                progressed = True
        if not progressed:
            raise RuntimeError(f"schedule {schedule!r} deadlocks: every stage waits")
    return sorted(events, key=lambda e: (e.time, e.stage))


def bubble_fraction(events: list[Event]) -> Fraction:
    """The share of stage-time spent idle: 1 - busy / (stages x makespan), exactly."""
    n_stages = 1 + max(e.stage for e in events)
    makespan = max(e.time + e.duration for e in events)
    busy = sum(e.duration for e in events)
    return 1 - Fraction(busy, n_stages * makespan)


def gpipe_bubble(n_stages: int, n_micro: int) -> Fraction:
    """The formula: ``(p - 1) / (m + p - 1)``."""
    _check(n_stages, n_micro, 0)
    return Fraction(n_stages - 1, n_micro + n_stages - 1)


def peak_activations(events: list[Event]) -> list[int]:
    """Per stage, the most micro-batches whose activations are held at once (a forward
    done, its backward not yet)."""
    n_stages = 1 + max(e.stage for e in events)
    held, peak = [0] * n_stages, [0] * n_stages
    for e in events:  # sorted by time; each stage runs one pass at a time
        held[e.stage] += 1 if e.op == "F" else -1
        peak[e.stage] = max(peak[e.stage], held[e.stage])
    return peak


def timeline(events: list[Event]) -> str:
    """The schedule as text, a row per stage and a column per time unit: ``F3`` for the
    forward of micro-batch 3, ``B3`` its backward, ``..`` idle."""
    n_stages = 1 + max(e.stage for e in events)
    makespan = max(e.time + e.duration for e in events)
    rows = [[".."] * makespan for _ in range(n_stages)]
    for e in events:
        for t in range(e.time, e.time + e.duration):
            rows[e.stage][t] = f"{e.op}{e.microbatch}"[:2]
    return "\n".join(f"stage {s}: " + " ".join(row) for s, row in enumerate(rows))


# --------------------------------------------------------------------------------------
# Running a schedule: a GPT cut into stages, one per rank


class PipelineStage(nn.Module):
    """Stage ``stage`` of ``n_stages`` of ``model``: a contiguous run of blocks, plus
    the embeddings on the first stage and the final norm and head on the last.

    With tied weights the first and last stages each use the one ``(V, C)`` matrix (to
    embed, to score); on separate machines each holds a copy, and :func:`run_pipeline`
    sums the two copies' gradients so that they stay equal (Megatron's "embedding
    group"). Every rank must build its stage (the group for that sum is created
    collectively).
    """

    def __init__(self, model: GPT, stage: int, n_stages: int):
        super().__init__()
        _check(n_stages, 1, stage)
        L = len(model.blocks)
        if n_stages > L:
            raise ValueError(
                f"{n_stages} stages for {L} blocks: each stage needs a block"
            )
        bounds = [round(k * L / n_stages) for k in range(n_stages + 1)]
        self.stage, self.n_stages = stage, n_stages
        self.first, self.last = stage == 0, stage == n_stages - 1
        self.blocks = nn.ModuleList(model.blocks[bounds[stage] : bounds[stage + 1]])
        self.tok_emb = model.tok_emb if self.first else None
        self.pos_emb = model.pos_emb if self.first else None
        self.drop = model.drop
        self.rotary = model.rotary
        self.norm_f = model.norm_f if self.last else None
        self.lm_head = model.lm_head if self.last else None
        self.tied = model.config.tie_weights and n_stages > 1
        self.tied_group = dist.new_group([0, n_stages - 1]) if self.tied else None
        names = {id(p): n for n, p in model.named_parameters()}
        self.model_names = {n: names[id(p)] for n, p in self.named_parameters()}

    def forward(self, x: Tensor) -> Tensor:
        """Token ids ``(B, T)`` on the first stage, else the residual stream
        ``(B, T, C)``; returns the stream, or logits ``(B, T, V)`` on the last stage."""
        if self.first:
            h = self.tok_emb(x)  # (B, T, C)
            if self.pos_emb is not None:
                h = h + self.pos_emb(x.shape[1], 0)
            x = self.drop(h)
        for block in self.blocks:
            x = block(x, rotary=self.rotary)
        return self.lm_head(self.norm_f(x)) if self.last else x

    def gradients(self) -> dict[str, Tensor | None]:
        """The gradients of this stage's parameters, under the whole model's names."""
        return {self.model_names[n]: p.grad for n, p in self.named_parameters()}


def run_pipeline(
    stage: PipelineStage,
    idx: Tensor,
    targets: Tensor,
    n_micro: int,
    schedule: str = "1f1b",
) -> tuple[Tensor | None, int]:
    """One training step's forward and backward on this rank's ``stage`` (rank = stage),
    ``n_micro`` micro-batches in ``schedule``'s order. Every rank passes the whole batch
    ``idx``, ``targets`` ``(B, T)``; the first stage reads the tokens, the last the
    targets.

    Returns the mean loss over the batch (last stage; None elsewhere) and the most
    micro-batches whose activations this stage held at once. Gradients accumulate in the
    stage's parameters, as after ``loss.backward()`` on the whole batch.
    """
    if idx.shape[0] % n_micro:
        raise ValueError(
            f"batch of {idx.shape[0]} does not split into {n_micro} equal micro-batches"
        )
    s, p = stage.stage, stage.n_stages
    micro_idx, micro_targets = idx.chunk(n_micro), targets.chunk(n_micro)
    inputs, outputs, sends, losses, peak = {}, {}, [], [], 0
    for op, i in _schedule(schedule)(p, n_micro, s):
        if op == "F":
            x = micro_idx[i] if stage.first else _receive(micro_idx[i], stage, s - 1)
            y = stage(x)
            if stage.last:  # each micro-batch's mean, / m: the whole batch's mean
                loss = (
                    F.cross_entropy(y.flatten(0, 1).float(), micro_targets[i].flatten())
                    / n_micro
                )
                outputs[i] = loss
                losses.append(loss.detach())
            else:
                outputs[i] = y
                sends.append(_send(y.detach(), s + 1))
            inputs[i] = x
            peak = max(peak, len(inputs))
        else:
            if stage.last:
                outputs.pop(i).backward()
            else:
                grad = torch.empty_like(outputs[i])
                dist.recv(grad, src=s + 1)
                outputs.pop(i).backward(grad)
            x = inputs.pop(i)
            if not stage.first:
                sends.append(_send(x.grad, s - 1))
    for work, _ in sends:
        work.wait()
    if stage.tied and (stage.first or stage.last):
        weight = stage.tok_emb.weight if stage.first else stage.lm_head.weight
        dist.all_reduce(weight.grad, group=stage.tied_group)
    return (torch.stack(losses).sum() if stage.last else None), peak


def _receive(tokens: Tensor, stage: PipelineStage, src: int) -> Tensor:
    """The residual stream of one micro-batch from stage ``src``: ``(b, T, C)``."""
    b, T = tokens.shape
    C = stage.blocks[0].norm1.weight.shape[0]
    x = torch.empty(b, T, C)
    dist.recv(x, src=src)
    return x.requires_grad_()


def _send(tensor: Tensor, dst: int) -> tuple[dist.Work, Tensor]:
    """Start sending; keep the tensor alive with its handle until the send completes.
    Sends do not block: with 1F1B two neighbours may both be sending at once."""
    tensor = tensor.contiguous()
    return dist.isend(tensor, dst=dst), tensor
