"""``python -m llmbook.train``: pretrain the book's GPT from the command line
(Chapter 5)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from llmbook.artifacts import atomic_write_text
from llmbook.model import GPTConfig
from llmbook.profiles import TrainSettings, get_profile
from llmbook.train.book import book_splits, pretrained_model
from llmbook.train.checkpoint import CheckpointError
from llmbook.train.config import TrainConfig
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:  # torchrun: batches already shard by rank; gradients are Chapter 6's
        raise SystemExit("multi-process training (torchrun, WORLD_SIZE > 1) needs data "
                         "parallelism, which Chapter 6 adds; run a single process")
    rank = int(os.environ.get("RANK", "0"))
    profile = get_profile(args.profile)  # resolved once, here
    overrides = parse_overrides(args.set, TrainSettings)
    if args.out is None:
        if args.model or args.resume:
            raise SystemExit("--model and --resume need --out (the book's cached model has "
                             "the profile's shape)")
        result = pretrained_model(profile, tokenizer=args.tokenizer,
                                  progress=not args.no_progress, **overrides)
        print(json.dumps({"artifact": str(result.path), **result.summary}, indent=1))
        return 0

    tok, splits = book_splits(profile, args.tokenizer)
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
    trainer = Trainer.for_text(config, splits["train"], splits["val"],
                               device=profile.device, rank=rank, world_size=world_size,
                               log_path=args.out / LOG_FILE, progress=not args.no_progress)
    if args.resume:
        trainer.resume(checkpoint)
    elif trainer.log_path is not None:
        atomic_write_text(trainer.log_path, "")
    trainer.fit(checkpoint_path=checkpoint, checkpoint_interval=args.checkpoint_interval)
    print(json.dumps(finish_run(trainer, splits, args.out), indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, CheckpointError) as error:  # bad settings or checkpoint: say which
        sys.exit(f"python -m llmbook.train: error: {error}")
