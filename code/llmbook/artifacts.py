"""Artifacts that one chapter builds and later chapters reuse, cached on disk and keyed by what made them.

An artifact (the cleaned corpus, a trained tokenizer, a pretrained checkpoint) is a directory under
:func:`llmbook.paths.cache_dir`. Its key hashes the artifact's kind, its config (a dataclass) and the source of
the modules that build it, so changing either the config or the code builds a fresh one; nothing goes stale
silently. Building happens in a temporary directory that is renamed into place only when complete, so an
interrupted build never leaves a half-written artifact behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

from llmbook.paths import cache_dir


def config_dict(config: Any) -> dict:
    """A JSON-ready dict of a dataclass config (nested dataclasses, tuples and paths included)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass config, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str))


def artifact_key(kind: str, config: Any, modules: Iterable[ModuleType] = ()) -> str:
    """A short hash of (kind, config, source of ``modules``): the name of the artifact's directory."""
    digest = hashlib.sha256()
    digest.update(kind.encode())
    digest.update(json.dumps(config_dict(config), sort_keys=True).encode())
    for module in sorted(modules, key=lambda m: m.__name__):
        digest.update(module.__name__.encode())
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def cached_artifact(
    kind: str,
    config: Any,
    build: Callable[[Path], None],
    modules: Iterable[ModuleType] = (),
) -> Path:
    """Return the directory of artifact ``kind`` for ``config``, calling ``build(tmp_dir)`` first if needed.

    ``build`` writes its files into the directory it is given; on success that directory is renamed to
    ``<cache>/<kind>/<key>`` together with a ``config.json`` describing it.
    """
    modules = list(modules)
    final = cache_dir() / kind / artifact_key(kind, config, modules)
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        meta = {"kind": kind, "config": config_dict(config), "modules": [m.__name__ for m in modules]}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "config.json").is_file():  # not a concurrent build that won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with open(fd, "wb") as handle:
            handle.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))
