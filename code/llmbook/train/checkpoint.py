"""Checkpoints: a run's whole state in one checksummed file, written atomically. Chapter 5.

A checkpoint holds the model, the optimizer, the step, the data position, the random state
and the log, so that a fresh :class:`~llmbook.train.Trainer` that resumes from it continues
exactly where the run stopped.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import torch

CHECKPOINT_FORMAT = "llmbook-checkpoint"
# 2: the run's identity without the device, with the global batch; 3: without the
# per-process batch, the data position in windows, the optimizer keyed by parameter names
CHECKPOINT_VERSION = 3


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: corrupt, truncated, foreign, or from a different run."""


def encode_checkpoint(state: dict) -> bytes:
    """A checkpoint file: one header line with the format, the version and the SHA-256 of
    the payload, then the payload, ``torch.save(state)``. The digest catches what the zip
    container does not: a flipped bit inside tensor data loads without complaint, as a wrong
    weight."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    return f"{CHECKPOINT_FORMAT} {CHECKPOINT_VERSION} sha256={digest}\n".encode() + payload


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :meth:`Trainer.save_checkpoint`, or raise
    :class:`CheckpointError` saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    header, _, payload = path.read_bytes().partition(b"\n")
    fields = header.decode("ascii", errors="replace").split(" ")
    if len(fields) != 3 or fields[0] != CHECKPOINT_FORMAT or fields[2][:7] != "sha256=":
        raise CheckpointError(f"{path} is not an llmbook training checkpoint "
                              f"(no {CHECKPOINT_FORMAT!r} header)")
    if fields[1] != str(CHECKPOINT_VERSION):
        raise CheckpointError(f"{path} has checkpoint version {fields[1]}; this code reads "
                              f"version {CHECKPOINT_VERSION}")
    if hashlib.sha256(payload).hexdigest() != fields[2].removeprefix("sha256="):
        raise CheckpointError(f"{path} is corrupt or truncated (its SHA-256 does not match "
                              "its header); delete it and resume from an earlier "
                              "checkpoint, or start again")
    try:  # weights_only: a checkpoint is data, never code to run
        state = torch.load(io.BytesIO(payload), map_location=map_location,
                           weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc}); it "
                              "was not written by Trainer.save_checkpoint") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an llmbook training checkpoint")
    return state


def check_same_run(path: Path | str, ours: dict, theirs: dict) -> None:
    """Raise :class:`CheckpointError` naming every field where the run identity ``theirs``
    (from the checkpoint at ``path``) differs from ``ours``."""
    ours, theirs = _flatten(ours), _flatten(theirs)
    if ours != theirs:
        keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        diffs = ", ".join(f"{k}: {theirs.get(k)!r} in the checkpoint, {ours.get(k)!r} here"
                          for k in keys)
        raise CheckpointError(f"{path} was written by a different run ({diffs}); resume "
                              "with the same settings, or start a new run")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
