"""Data parallelism: every rank holds the whole model, sees its own slice of the batch,
and the ranks average their gradients before each optimizer step. Chapter 6.

:class:`DataParallel` is the from-scratch version of
``torch.nn.parallel.DistributedDataParallel``: parameters broadcast from rank 0 at
construction, gradients all-reduced in buckets while the backward pass is still running,
``no_sync`` for accumulation micro-batches. :func:`apply_fsdp` is the production path
for models that do not fit on one device (FSDP2's ``fully_shard``), and
:func:`llmbook.optim.clip_grad_norm` clips gradients whose pieces live on different ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum")


class _Bucket:
    """Parameters whose gradients travel in one all-reduce, and one flat buffer for
    them."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params
        self.buffer = torch.empty(
            sum(p.numel() for p in params),
            dtype=params[0].dtype,
            device=params[0].device,
        )
        self.ready: set[int] = set()
        self.work: dist.Work | None = None


class DataParallel(nn.Module):
    """Wrap ``module`` for data-parallel training on the default process group.
    Chapter 6.

    * **Same start.** Parameters and buffers are broadcast from rank 0 at construction,
      so ranks may build the model from different seeds.
    * **Buckets.** Gradients are grouped, in the reverse order of
      ``module.parameters()`` (roughly the order backward produces them), into buckets
      of about ``bucket_bytes``; one all-reduce per bucket costs one latency instead of
      one per tensor.
    * **Overlap.** A hook on each parameter (``register_post_accumulate_grad_hook``)
      marks its gradient ready; a full bucket starts its all-reduce asynchronously while
      backward goes on computing earlier layers. The backward pass ends by waiting for
      them all.
    * **Left alone.** Parameters with ``requires_grad=False`` get no hook and no
      all-reduce.
    * **Tied weights** (GPT's ``tok_emb``/``lm_head``) are one ``Parameter`` reached
      twice: it is bucketed once, and autograd sums both uses into its gradient before
      the hook.
    * ``reduction="mean"`` gives the gradient of the mean loss over the global batch
      when every rank's loss is a mean over an equal share; ``"sum"`` adds the ranks'
      gradients.
    * A parameter that got no gradient on this backward is reduced as zeros (every rank
      must take part in every all-reduce), and gets that gradient.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        bucket_bytes: int = 25 * 2**20,
        reduction: str = "mean",
        broadcast: bool = True,
    ):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}"
            )
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
        if not dist.is_initialized():
            raise RuntimeError(
                "DataParallel needs a process group: call "
                "torch.distributed.init_process_group first (or use "
                "llmbook.parallel.dist.spawn / torchrun)"
            )
        self.module = module
        self.reduction = reduction
        self.world_size = dist.get_world_size()
        self._sync = True
        self._callback_queued = False
        self.overlapped = 0  # buckets the last backward sent before it finished
        if broadcast:
            with torch.no_grad():
                for tensor in module.state_dict(keep_vars=True).values():
                    dist.broadcast(tensor.data, src=0)
        unique = list(
            {id(p): p for p in module.parameters() if p.requires_grad}.values()
        )
        self.buckets = self._make_buckets(unique[::-1], bucket_bytes)
        self._bucket_of: dict[int, _Bucket] = {}
        for bucket in self.buckets:
            for p in bucket.params:
                self._bucket_of[id(p)] = bucket
                p.register_post_accumulate_grad_hook(self._on_grad_ready)

    @staticmethod
    def _make_buckets(params: list[nn.Parameter], bucket_bytes: int) -> list[_Bucket]:
        buckets, current, size = [], [], 0
        for p in params:
            nbytes = p.numel() * p.element_size()
            if current and (
                size + nbytes > bucket_bytes or p.dtype != current[0].dtype
            ):
                buckets.append(_Bucket(current))
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            buckets.append(_Bucket(current))
        return buckets

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside accumulate gradients locally, with no communication;
        the first synchronised backward after reduces the accumulated sum (gradient
        accumulation over micro-batches pays for one all-reduce, not one per
        micro-batch)."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def _on_grad_ready(self, param: Tensor) -> None:
        if not self._sync:
            return
        if not self._callback_queued:  # once per backward: finish when autograd is done
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)
            self._callback_queued = True
            self.overlapped = 0
        bucket = self._bucket_of[id(param)]
        bucket.ready.add(id(param))
        if len(bucket.ready) == len(bucket.params):
            self._launch(bucket)
            self.overlapped += 1

    def _launch(self, bucket: _Bucket) -> None:
        offset = 0
        for p in bucket.params:
            n = p.numel()
            chunk = bucket.buffer[offset : offset + n]
            if p.grad is None:
                chunk.zero_()
            else:
                chunk.copy_(p.grad.reshape(-1))
            offset += n
        if (
            self.reduction == "mean"
        ):  # divide first: the sum of N gradients cannot overflow
            bucket.buffer.div_(self.world_size)
        bucket.work = dist.all_reduce(
            bucket.buffer, op=dist.ReduceOp.SUM, async_op=True
        )

    def _finish(self) -> None:
        """After backward: reduce buckets that never filled, wait, copy back the
        results."""
        self._callback_queued = False
        for bucket in self.buckets:
            if bucket.work is None:
                self._launch(bucket)
        for bucket in self.buckets:
            bucket.work.wait()
            offset = 0
            for p in bucket.params:
                n = p.numel()
                reduced = bucket.buffer[offset : offset + n].view_as(p)
                if p.grad is None:
                    p.grad = reduced.clone()
                else:
                    p.grad.copy_(reduced)
                offset += n
            bucket.work = None
            bucket.ready.clear()


# --------------------------------------------------------------------------------------
# FSDP2: the production path


def apply_fsdp(
    model: nn.Module, mesh=None, *, reshard_after_forward: bool = True, mp_policy=None
) -> nn.Module:
    """Shard ``model`` (a :class:`llmbook.model.GPT`) with FSDP2: each block is one unit
    (its parameters gathered just before it runs and freed after), then the root takes
    what is left (embeddings, final norm, head; the tied head stays one parameter).
    Chapter 6.

    ``mesh`` defaults to all ranks of the default group on the model's device type;
    ``mp_policy`` is an ``torch.distributed.fsdp.MixedPrecisionPolicy`` for bf16.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not hasattr(model, "blocks"):
        raise TypeError(
            f"apply_fsdp expects a model with .blocks (a GPT), got "
            f"{type(model).__name__}"
        )
    if mesh is None:
        device_type = next(model.parameters()).device.type
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    kwargs = {
        "mesh": mesh,
        "reshard_after_forward": reshard_after_forward,
        "mp_policy": mp_policy or MixedPrecisionPolicy(),
    }
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model
