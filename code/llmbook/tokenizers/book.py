"""The book's tokenizer and its token files: cached artifacts that every chapter after
Chapter 2 reuses.

:func:`book_tokenizer` trains byte-level BPE on the training plays, with the GPT-4 split
pattern and one special token, ``<|endoftext|>``, at the vocabulary size of the profile; the
result is cached on disk keyed by that configuration, the corpus configuration and the
source of the code that builds it (:func:`llmbook.artifacts.cached_artifact`), so a later
chapter gets the same tokenizer without retraining.

:func:`book_token_file` encodes a split into a token file
(:func:`llmbook.data.write_token_file`). Each play is a document: it is encoded on its own
and followed by ``<|endoftext|>``, so that a model sees where one play ends and the next
begins, as GPT-2 was trained. Encoding uses the tiktoken export of the tokenizer (the unit
tests prove it gives our encoder's ids) because it is faster. :func:`cl100k_token_file` does
the same with GPT-4's tokenizer, whose ids need 32-bit storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmbook import data
from llmbook.artifacts import cached_artifact
from llmbook.profiles import Profile, get_profile
from llmbook.tokenizers import io, tiktoken_export
from llmbook.tokenizers.regex import ENDOFTEXT
from llmbook.tokenizers.tokenizer import BPEConfig, Tokenizer, train_bpe

BOOK_PATTERN = "gpt4"
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class BookTokenizerConfig:
    """What the book tokenizer depends on: its training options and the corpus it is trained
    on."""

    bpe: BPEConfig
    corpus: data.CorpusConfig = field(default_factory=data.CorpusConfig)


@dataclass(frozen=True)
class TokenFileConfig:
    """What a token file depends on: the tokenizer (a book config or the name of a fixed
    one) and the split."""

    tokenizer: BookTokenizerConfig | str
    split: str
    corpus: data.CorpusConfig = field(default_factory=data.CorpusConfig)


def _resolve(profile: Profile | str) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, str):
        return get_profile(profile, check_device=False)  # a tokenizer needs no GPU
    raise TypeError(f"profile must be a Profile or a profile name, "
                    f"got {type(profile).__name__}")


def book_tokenizer_config(profile: Profile | str) -> BookTokenizerConfig:
    settings = _resolve(profile).tokenizer
    return BookTokenizerConfig(BPEConfig(settings.vocab_size, BOOK_PATTERN, (ENDOFTEXT,)))


def _load_book_tokenizer(config: BookTokenizerConfig) -> Tokenizer:
    def build(out: Path) -> None:
        plays = data.split_plays("train", config.corpus).values()
        trained = train_bpe(plays, config.bpe, name=f"book-bpe-{config.bpe.vocab_size}")
        io.save(trained, out / TOKENIZER_FILE)

    path = cached_artifact("tokenizer", config, build)
    return io.load(path / TOKENIZER_FILE)


def book_tokenizer(profile: Profile | str) -> Tokenizer:
    """The book's tokenizer for ``profile`` (trained on first use, then read from the
    cache)."""
    return _load_book_tokenizer(book_tokenizer_config(profile))


def _write_split(encoding, eot: int, vocab_size: int, name: str, split: str,
                 corpus: data.CorpusConfig, path: Path) -> None:
    ids: list[int] = []
    for text in data.split_plays(split, corpus).values():
        ids.extend(encoding.encode(text))  # a play containing "<|endoftext|>" raises
        ids.append(eot)
    data.write_token_file(path, ids, vocab_size=vocab_size, tokenizer=name)


def book_token_file(profile: Profile | str, split: str) -> Path:
    """The ``.bin`` token file of ``split`` encoded with the book tokenizer (open it with
    ``data.TokenFile``)."""
    data._check_split(split)
    tok_config = book_tokenizer_config(profile)
    config = TokenFileConfig(tok_config, split)

    def build(out: Path) -> None:
        tok = _load_book_tokenizer(tok_config)
        encoding = tiktoken_export.to_tiktoken(tok)
        _write_split(encoding, tok.special_tokens[ENDOFTEXT], tok.n_vocab, tok.name, split,
                     config.corpus, out / f"{split}.bin")

    return cached_artifact("tokens", config, build) / f"{split}.bin"


def cl100k_token_file(split: str) -> Path:
    """The ``.bin`` token file of ``split`` encoded with GPT-4's ``cl100k_base`` (32-bit
    ids: 100,277 > 65,536)."""
    data._check_split(split)
    config = TokenFileConfig("cl100k_base", split)

    def build(out: Path) -> None:
        encoding = tiktoken_export.cl100k_encoding()
        _write_split(encoding, encoding.eot_token, encoding.n_vocab, "cl100k_base", split,
                     config.corpus, out / f"{split}.bin")

    return cached_artifact("tokens", config, build) / f"{split}.bin"
