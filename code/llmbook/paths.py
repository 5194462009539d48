"""Where the book keeps what it builds.

Everything generated (the cleaned corpus, token files, trained tokenizers, checkpoints)
lives under one cache directory, so that a chapter can run alone and in any order: it asks
for an artifact and the artifact is built on demand (see :mod:`llmbook.artifacts`).
``LLMBOOK_CACHE`` overrides the location.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _repo_root() -> Path | None:
    root = PACKAGE_DIR.parent.parent  # code/llmbook -> code -> repository root
    return (root if (root / "pyproject.toml").is_file() and (root / "chapters").is_dir()
            else None)


REPO_ROOT = _repo_root()


def cache_dir() -> Path:
    """The artifact cache: ``$LLMBOOK_CACHE``, else ``_build/cache`` in a checkout, else
    ``~/.cache/llmbook``."""
    if os.environ.get("LLMBOOK_CACHE"):
        path = Path(os.environ["LLMBOOK_CACHE"]).expanduser()
    elif REPO_ROOT is not None:
        path = REPO_ROOT / "_build" / "cache"
    else:
        path = Path.home() / ".cache" / "llmbook"
    path.mkdir(parents=True, exist_ok=True)
    return path
