"""``python -m llmbook.train``: pretrain the book's GPT from the command line
(Chapter 5), on one process or on several under ``torchrun`` (Chapter 6).

One machine, two processes (gloo on CPUs, NCCL on GPUs)::

    torchrun --standalone --nproc_per_node=2 -m llmbook.train --profile cpu \
        --out runs/ddp --parallel ddp

Two machines: run this on each, HOST being the first machine's address::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d \
        --rdzv-endpoint=HOST:29500 --rdzv-id=run1 -m llmbook.train --profile gpu \
        --out runs/fsdp --parallel fsdp

``--set batch_size=B`` is each process's micro-batch: the global batch is
``B x grad_accum x processes`` sequences. Checkpoints are gathered and record the global
batch, not its cut, so ``--resume`` continues a run on another number of processes:
started on 2 with ``batch_size=2``, it resumes on 1 with ``--set batch_size=4``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch.distributed as dist

from llmbook.artifacts import atomic_write_text
from llmbook.model import GPTConfig
from llmbook.profiles import TrainSettings, get_profile
from llmbook.train.book import book_splits, pretrained_model
from llmbook.train.checkpoint import CheckpointError
from llmbook.train.config import TrainConfig
from llmbook.train.distributed import PARALLEL, data_parallel_wrap, launch_from_env
from llmbook.train.loop import Trainer
from llmbook.train.pretrained import LOG_FILE, finish_run


def parse_overrides(pairs: Sequence[str], cls: type) -> dict[str, Any]:
    """``["lr=1e-3", "compile=false"]`` -> ``{"lr": 0.001, "compile": False}``, typed by the
    fields of the dataclass ``cls``."""
    readers = {"int": int, "float": float, "str": str, "bool": _read_bool,
               "int | None": _read_optional_int}
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"overrides take FIELD=VALUE with FIELD one of "
                             f"{sorted(types)}; got {pair!r}")
        try:
            out[key] = readers[types[key]](text)
        except (KeyError, ValueError):
            message = f"cannot read {text!r} as the {types[key]} that {key} takes"
            raise SystemExit(message) from None
    return out


def _read_bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
    return text.lower() in ("true", "1")


def _read_optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llmbook.train",
        description="Pretrain the book's GPT on Shakespeare (Chapter 5). Without --out, "
                    "train the profile's model into the artifact cache that later chapters "
                    "read; with --out, a resumable run directory (log.jsonl, "
                    "checkpoint.pt, model.pt, run.json, summary.json).")
    parser.add_argument("--profile", required=True, choices=["cpu", "gpu"])
    parser.add_argument("--out", type=Path,
                        help="run directory (checkpoints, log); omit for the cached model")
    parser.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
    parser.add_argument("--tokenizer", default="book", choices=["book", "bytes"])
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override training settings, e.g. --set steps=200 lr=1e-3")
    parser.add_argument("--model", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override model fields, e.g. --model n_layer=2 (needs --out)")
    parser.add_argument("--checkpoint-interval", type=int, default=None,
                        help="steps between checkpoints (default: only at the end)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--parallel", choices=PARALLEL, default="ddp",
                        help="under torchrun: our data parallelism (ddp), torch's "
                             "DistributedDataParallel (torch-ddp) or FSDP2 (fsdp)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    profile = get_profile(args.profile)  # resolved once, here
    overrides = parse_overrides(args.set, TrainSettings)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and args.out is None:
        raise SystemExit("several processes train into a run directory: pass --out")
    launch = launch_from_env(profile.device)  # joins the process group under torchrun
    try:
        return _run(args, profile, overrides, launch)
    finally:
        if launch.backend is not None and dist.is_initialized():
            dist.destroy_process_group()


def _run(args: argparse.Namespace, profile: Any, overrides: dict, launch: Any) -> int:
    rank, world_size = launch.rank, launch.world_size
    if args.out is None:
        if args.model or args.resume:
            raise SystemExit("--model and --resume need --out (the book's cached model has "
                             "the profile's shape)")
        result = pretrained_model(profile, tokenizer=args.tokenizer,
                                  progress=not args.no_progress, **overrides)
        print(json.dumps({"artifact": str(result.path), **result.summary}, indent=1))
        return 0

    if world_size > 1 and rank != 0:
        dist.barrier()  # rank 0 builds (or finds) the cached tokenizer and splits first
    tok, splits = book_splits(profile, args.tokenizer)
    if world_size > 1 and rank == 0:
        dist.barrier()
    config = TrainConfig.for_profile(profile, vocab_size=tok.n_vocab,
                                     data=splits["train"].tokens.meta["sha256"],
                                     **overrides)
    if args.model:
        model = dataclasses.replace(config.model, **parse_overrides(args.model, GPTConfig))
        config = dataclasses.replace(config, model=model)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "checkpoint.pt"
    if checkpoint.exists() and not args.resume:
        raise SystemExit(f"{checkpoint} exists: pass --resume to continue that run, or "
                         "choose another --out")
    wrap = data_parallel_wrap(args.parallel, launch) if world_size > 1 else None
    trainer = Trainer.for_text(config, splits["train"], splits["val"],
                               device=launch.device, rank=rank, world_size=world_size,
                               wrap=wrap, log_path=args.out / LOG_FILE,
                               progress=not args.no_progress)
    if args.resume:
        trainer.resume(checkpoint)
    elif trainer.log_path is not None:
        atomic_write_text(trainer.log_path, "")
    trainer.fit(checkpoint_path=checkpoint, checkpoint_interval=args.checkpoint_interval)
    summary = finish_run(trainer, splits, args.out)
    if rank == 0:  # one process speaks for the run
        print(json.dumps({"world_size": world_size, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, CheckpointError) as error:  # bad settings or checkpoint: say which
        sys.exit(f"python -m llmbook.train: error: {error}")
