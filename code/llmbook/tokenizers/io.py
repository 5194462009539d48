"""Saving and loading tokenizers: our versioned JSON format, and tiktoken's ``.tiktoken``.

**The llmbook tokenizer format** (``.json``, UTF-8), version 1, one JSON object with the
keys:

- ``"format": "llmbook-bpe"`` and ``"version": 1``, so a foreign or future file is
  recognised and refused;
- ``"name"``: a label; ``"pattern"``: the pre-tokenization regex; ``"special_tokens"``:
  ``{string: id}``;
- ``"merges"``: ``[[left, right], ...]``, merge ``i`` making id ``256 + i`` (a tokenizer we
  trained), **or** ``"ranks"``: ``[[base64 token, rank], ...]`` sorted by rank (a tokenizer
  known only by ranks, e.g. cl100k); exactly one of the two is non-null;
- ``"sha256"``: the SHA-256 of the canonical JSON (sorted keys, no spaces, ASCII) of all the
  other keys, so a file damaged or edited by hand fails with a clear error instead of
  silently encoding differently.

**The tiktoken format** (``.tiktoken``): one line per mergeable token,
``<base64 bytes> <rank>``, sorted by rank. It holds only the ranks: the pattern and the
special tokens must be supplied when loading.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Mapping

from llmbook.artifacts import atomic_write_text
from llmbook.tokenizers.tokenizer import Tokenizer

FORMAT = "llmbook-bpe"
VERSION = 1


class TokenizerFileError(ValueError):
    """A tokenizer file is damaged, foreign, or of an unsupported version; the message says
    which."""


def _digest(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def to_dict(tokenizer: Tokenizer) -> dict:
    """The file's JSON object for ``tokenizer`` (checksum included)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "name": tokenizer.name,
        "pattern": tokenizer.pattern,
        "special_tokens": dict(sorted(tokenizer.special_tokens.items(),
                                      key=lambda kv: kv[1])),
        "merges": None if tokenizer.merges is None else [list(p) for p in tokenizer.merges],
        "ranks": None if tokenizer.merges is not None else [
            [base64.b64encode(token).decode("ascii"), rank]
            for token, rank in sorted(tokenizer.ranks.items(), key=lambda kv: kv[1])
        ],
    }
    return payload | {"sha256": _digest(payload)}


def save(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write ``tokenizer`` to ``path`` in the llmbook format (atomically: a crash never
    leaves half a file)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(to_dict(tokenizer), ensure_ascii=False) + "\n")
    return path


def from_dict(data: object, source: str = "<dict>") -> Tokenizer:
    """The tokenizer of a parsed llmbook JSON object; every defect is a
    :class:`TokenizerFileError`."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TokenizerFileError(f"{source} is not an llmbook tokenizer file (no "
                                 f"\"format\": \"{FORMAT}\" key); for tiktoken's .tiktoken "
                                 "ranks use load_tiktoken()")
    if data.get("version") != VERSION:
        raise TokenizerFileError(f"{source} has format version {data.get('version')!r}; "
                                 f"this code reads version {VERSION}. Upgrade llmbook or "
                                 "re-save the tokenizer with this version.")
    payload = {k: v for k, v in data.items() if k != "sha256"}
    if data.get("sha256") != _digest(payload):
        raise TokenizerFileError(f"{source} fails its SHA-256 check: the file was damaged "
                                 "or edited after saving. Re-create it (train again, or "
                                 "save from a good copy).")
    try:
        merges, ranks = data["merges"], data["ranks"]
        if (merges is None) == (ranks is None):
            raise TokenizerFileError(f"{source} must have exactly one of 'merges' "
                                     "and 'ranks'")
        specials = {str(k): int(v) for k, v in data["special_tokens"].items()}
        if merges is not None:
            pairs = [(int(a), int(b)) for a, b in merges]
            tokenizer = Tokenizer.from_merges(pairs, data["pattern"],
                                              sorted(specials, key=specials.get),
                                              name=data["name"])
            if tokenizer.special_tokens != specials:
                raise TokenizerFileError(f"{source}: special token ids {specials} do not "
                                         "follow the merges")
            return tokenizer
        decoded = {base64.b64decode(token, validate=True): int(rank)
                   for token, rank in ranks}
        return Tokenizer(decoded, data["pattern"], specials, name=data["name"])
    except TokenizerFileError:
        raise
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise TokenizerFileError(f"{source} is an llmbook tokenizer file with invalid "
                                 f"contents: {exc}") from exc


def load(path: str | Path) -> Tokenizer:
    """Read a tokenizer saved by :func:`save`. A damaged, foreign or future file raises
    TokenizerFileError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        hint = (" It looks like tiktoken's ranks format: "
                "use load_tiktoken(path, pattern=...)."
                if _looks_like_tiktoken(raw)
                else " Is it truncated, or some other kind of file?")
        raise TokenizerFileError(f"{path} is not valid JSON ({exc}).{hint}") from exc
    return from_dict(data, str(path))


def _looks_like_tiktoken(raw: bytes) -> bool:
    first = raw.split(b"\n", 1)[0].split()
    return len(first) == 2 and first[1].isdigit()


def tiktoken_text(ranks: Mapping[bytes, int]) -> str:
    """Ranks in tiktoken's ``.tiktoken`` format: one ``<base64 token> <rank>`` line per
    token, by rank. The bytes OpenAI publishes for its encodings are exactly this text."""
    return "".join(f"{base64.b64encode(token).decode('ascii')} {rank}\n"
                   for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))


def save_tiktoken(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write the ranks in tiktoken's format (``tiktoken.load.load_tiktoken_bpe`` reads
    it)."""
    atomic_write_text(Path(path), tiktoken_text(tokenizer.ranks))
    return Path(path)


def load_tiktoken(
    path: str | Path,
    pattern: str,
    special_tokens: Mapping[str, int] | None = None,
    *,
    name: str | None = None,
) -> Tokenizer:
    """A tokenizer from a ``.tiktoken`` ranks file plus the pattern and special tokens the
    format lacks."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .tiktoken file at {path}")
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line:
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError(f"expected '<base64> <rank>', found {len(fields)} fields")
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
        except (ValueError, binascii.Error) as exc:
            raise TokenizerFileError(f"{path}, line {number}: not a .tiktoken line "
                                     f"({exc}): {line[:60]!r}") from exc
        if token in ranks:
            raise TokenizerFileError(f"{path}, line {number}: token {token!r} "
                                     "appears twice")
        ranks[token] = rank
    if not ranks:
        raise TokenizerFileError(f"{path} holds no ranks; it is empty or not a "
                                 ".tiktoken file")
    try:
        return Tokenizer(ranks, pattern, special_tokens, name=name or path.stem)
    except ValueError as exc:
        raise TokenizerFileError(f"{path} does not describe a usable tokenizer: {exc}") \
            from exc
