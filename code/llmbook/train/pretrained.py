"""Pretrained models as artifacts: train once, finish the run the same way every time, cache
the result keyed by everything that determines it, read it back. Chapter 5."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmbook.artifacts import (atomic_write_bytes, atomic_write_text, cached_artifact,
                               config_dict)
from llmbook.model import GPT
from llmbook.train.config import TrainConfig
from llmbook.train.distributed import model_state
from llmbook.train.evaluation import TokenSplit
from llmbook.train.loop import Trainer

MODEL_FILE, LOG_FILE, SUMMARY_FILE, RUN_FILE = ("model.pt", "log.jsonl", "summary.json",
                                               "run.json")


@dataclass(frozen=True)
class PretrainSpec:
    """The key of a pretrained-model artifact: the run, the tokenizer and the exact data."""

    run: TrainConfig
    tokenizer: str
    val_data: str  # SHA-256 of the validation tokens (the training tokens' is run.data)
    global_batch_tokens: int  # tokens per optimizer step over all processes


@dataclass
class Pretrained:
    """A pretrained model with what explains it: its tokenizer, run config, log and
    scores."""

    model: GPT
    tokenizer: Any
    config: TrainConfig
    log: list[dict]
    summary: dict
    path: Path


def finish_run(trainer: Trainer, splits: dict[str, TokenSplit], out: Path) -> dict:
    """What ends every pretraining run, cached or not: load the weights ``keep_best`` kept,
    score every token of the held-out splits, and write the weights (``model.pt``), the run
    (``run.json``) and a summary (``summary.json``) to ``out``, atomically. Returns the
    summary. Only rank 0 writes."""
    trainer.use_best()
    model = trainer.model
    scores = {name: trainer.evaluate(splits[name]) for name in ("val", "test")
              if name in splits}
    tokens = trainer.step * trainer.config.tokens_per_step * trainer.world_size
    summary = {
        "steps": trainer.step, "tokens": tokens,
        "epochs": tokens / len(splits["train"].tokens),
        "selected_step": trainer.best["step"] if trainer.best else trainer.step,
        "parameters": model.num_parameters(),
        "non_embedding_parameters": model.num_parameters(non_embedding=True),
        "seconds": trainer.timings,
    }
    for name, result in scores.items():
        summary |= {f"{name}_loss": result.nats_per_token,
                    f"{name}_bpc": result.bits_per_char,
                    f"{name}_tokens": result.tokens, f"{name}_chars": splits[name].n_chars}
    weights = {k: v.cpu() for k, v in model_state(model).items()}  # every rank gathers
    if trainer.rank == 0:
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        atomic_write_bytes(out / MODEL_FILE, buffer.getvalue())
        atomic_write_text(out / RUN_FILE, json.dumps(config_dict(trainer.config), indent=1))
        atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
    return summary


def cached_pretrained(spec: PretrainSpec, splits: dict[str, TokenSplit], tokenizer: Any, *,
                      device: str = "cpu", progress: bool = False) -> Pretrained:
    """Train ``spec.run`` on ``splits`` (train, val, test) unless cached; load the result.
    The device is not in the key: the same run gives the same model wherever it ran."""

    def build(out: Path) -> None:
        trainer = Trainer.for_text(spec.run, splits["train"], splits["val"], device=device,
                                   log_path=out / LOG_FILE, progress=progress)
        trainer.fit()
        finish_run(trainer, splits, out)

    path = cached_artifact("pretrained", spec, build)
    return load_pretrained(path, tokenizer, device=device)


def load_pretrained(path: Path | str, tokenizer: Any = None, *,
                    device: str = "cpu") -> Pretrained:
    """Read a finished run's directory (:func:`finish_run`): weights, run config, log and
    summary, the model on ``device`` (the CPU when ``cuda`` is asked for and there is no
    GPU: a GPU-trained model still loads on a laptop)."""
    path = Path(path)
    missing = [n for n in (MODEL_FILE, RUN_FILE, LOG_FILE, SUMMARY_FILE)
               if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a finished training run (missing "
                                f"{', '.join(missing)}); train it with python -m "
                                "llmbook.train")
    config = TrainConfig.from_dict(json.loads((path / RUN_FILE).read_text()))
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    model = GPT(config.model)
    model.load_state_dict(torch.load(path / MODEL_FILE, map_location="cpu",
                                     weights_only=True))
    model.to(device).eval()
    lines = (path / LOG_FILE).read_text().splitlines()
    log = [json.loads(line) for line in lines if line.strip()]
    summary = json.loads((path / SUMMARY_FILE).read_text())
    return Pretrained(model, tokenizer, config, log, summary, path)
