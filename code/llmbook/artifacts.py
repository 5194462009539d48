"""Artifacts that one chapter builds and later chapters reuse, cached on disk and keyed by
what made them.

An artifact (the cleaned corpus, a trained tokenizer, a pretrained checkpoint) is a
directory under :func:`llmbook.paths.cache_dir`. Its key hashes the artifact's kind, its
config (a dataclass) and the source of the code that builds it: the module that defines the
build function and every llmbook module it imports, transitively, found by reading their
import statements (:func:`code_modules`). Changing the config or any of that code builds a
fresh artifact, so nothing goes stale; editing a module the builder never imports (a
chapter's plotting helper, the command line) rebuilds nothing. Building happens in a
temporary directory that is renamed into place only when complete, so an interrupted build
never leaves a half-written artifact behind.
"""

from __future__ import annotations

import dataclasses
import functools
import ast
import hashlib
import importlib
import importlib.util
import inspect
import json
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable

from llmbook.paths import cache_dir


def config_dict(config: Any) -> dict:
    """A JSON-ready dict of a dataclass config (nested dataclasses, tuples and paths
    included)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass config, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str))


def artifact_key(kind: str, config: Any, modules: Iterable[ModuleType] = ()) -> str:
    """A short hash of (kind, config, source of ``modules``): the name of the artifact's
    directory."""
    digest = hashlib.sha256()
    digest.update(kind.encode())
    digest.update(json.dumps(config_dict(config), sort_keys=True).encode())
    for module in sorted(modules, key=lambda m: m.__name__):
        digest.update(module.__name__.encode())
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def code_modules(root: str) -> list[ModuleType]:
    """Module ``root`` and every ``llmbook`` module it imports, transitively, in name order.

    Imports are read from the source (``import llmbook.x``, ``from llmbook import x``,
    ``from llmbook.x import y``, at any depth of the code, relative ones included), so the
    list follows the code without anyone maintaining it. A package's ``__init__`` is
    included only when imported by name: ours only re-export, and importing
    ``llmbook.train.loop`` does not make the rest of ``llmbook.train`` part of what builds
    an artifact.
    """
    seen: dict[str, ModuleType] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        module = sys.modules.get(name) or importlib.import_module(name)
        seen[name] = module
        todo.extend(_imported_llmbook_modules(module))
    return [seen[name] for name in sorted(seen)]


def _imported_llmbook_modules(module: ModuleType) -> list[str]:
    name = module.__name__
    package = name if hasattr(module, "__path__") else name.rpartition(".")[0]
    return list(_imports_in_source(package, inspect.getsource(module)))


@functools.lru_cache(maxsize=None)
def _imports_in_source(package: str, source: str) -> tuple[str, ...]:
    # keyed by the source text itself: parsing is most of the cost of a cache lookup, and an
    # edited module is parsed anew
    # only llmbook's names are looked up: finding ``tqdm.auto.tqdm`` would import
    # ``tqdm.auto`` (and its warnings) or a whole library just to learn it is not ours
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            relative = "." * node.level + (node.module or "")
            base = importlib.util.resolve_name(relative, package)
            if base.split(".")[0] != "llmbook":
                continue
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            found += [sub for sub in submodules if _is_module(sub)]
            if not all(map(_is_module, submodules)):
                found.append(base)  # a name defined in ``base`` itself
    return tuple(m for m in found if m.split(".")[0] == "llmbook" and _is_module(m))


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # "llmbook.x.SomeClass": a name, not a module
        return False


def read_artifact(path: Path | str) -> dict:
    """What an artifact directory says about itself: ``{"kind", "config", "modules"}``, the
    config as the JSON-ready dict of :func:`config_dict`."""
    meta_path = Path(path) / "config.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not an artifact directory (no config.json); "
                                "build it with llmbook.artifacts.cached_artifact")
    return json.loads(meta_path.read_text(encoding="utf-8"))


def artifact_path(kind: str, config: Any, module: str) -> Path:
    """Where :func:`cached_artifact` keeps artifact ``kind`` for ``config`` when its build
    function lives in ``module``; the artifact exists once ``config.json`` is there."""
    return cache_dir() / kind / artifact_key(kind, config, code_modules(module))


def is_cached(kind: str, config: Any, module: str) -> bool:
    """Whether :func:`cached_artifact` would return without building."""
    return (artifact_path(kind, config, module) / "config.json").is_file()


def cached_artifact(kind: str, config: Any, build: Callable[[Path], None]) -> Path:
    """Return the directory of artifact ``kind`` for ``config``, calling ``build(tmp_dir)``
    first if needed.

    ``build`` writes its files into the directory it is given; on success that directory is
    renamed to ``<cache>/<kind>/<key>`` together with a ``config.json`` describing it. The
    key covers the code of ``build``'s module and what it imports (:func:`code_modules`).
    """
    modules = code_modules(build.__module__)
    final = cache_dir() / kind / artifact_key(kind, config, modules)
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        meta = {"kind": kind, "config": config_dict(config),
                "modules": [m.__name__ for m in modules]}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        try:
            tmp.rename(final)
        except OSError:
            # not a concurrent build that won the race
            if not (final / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a
    rename."""
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
