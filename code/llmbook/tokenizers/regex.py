"""Pre-tokenization: the regular expressions that cut text into words before BPE, and
special tokens.

Chapter 2 explains why byte-level BPE never merges across the whole text: a regex first
splits it into "words" (a letter run with its leading space, a number, a punctuation run,
whitespace), and merges happen only inside a word. Without the split, frequent cross-word
sequences such as ``"e t"`` or ``". \\n"`` would become tokens, and ``dog``, ``dog.`` and
``dog!`` would need a token each. Special tokens such as ``<|endoftext|>`` are cut out
before the regex runs, so they are never merged with their neighbours either.

The patterns are tiktoken's, character for character, so that our encoder and a
``tiktoken.Encoding`` built from our ranks split text identically (a test checks it). Both
use possessive quantifiers (``++``, ``?+``), which Python's ``regex`` module supports and
the standard ``re`` module (before Python 3.11) does not.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Iterator, Mapping

import regex

# GPT-2 (2019): a contraction, or an optional space and a run of letters, of digits, or of
# other symbols; whitespace before a word stays with the word (" the"), the rest of a
# whitespace run is a word of its own.
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)

# GPT-4's cl100k_base (2023): case-insensitive contractions; a letter run may take any one
# leading non-letter, non-digit character except a line break (so "(the" and "\"the" are one
# word); numbers are cut into groups of at most three digits; punctuation keeps the line
# breaks that follow it; line breaks are grouped with the spaces before them.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
    r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

# GPT-4o's o200k_base (2024), as tiktoken defines it: a letter run is cut where lower case
# gives way to upper case ("CamelCase" is two words) and keeps its contraction ("they'll" is
# one word); punctuation keeps a following "/" as well as line breaks; otherwise as GPT-4.
GPT4O_SPLIT_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])

PATTERNS: dict[str, str] = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN,
                            "gpt4o": GPT4O_SPLIT_PATTERN}

ENDOFTEXT = "<|endoftext|>"


def resolve_pattern(pattern: str) -> str:
    """A pattern given by name (``"gpt2"``, ``"gpt4"``) or as a regular expression, returned
    as the expression.

    A string that is not a known name must compile as a ``regex`` pattern; a typo such as
    ``"gpt-4"`` would compile as a literal, so names that look like one of ours are rejected
    with a suggestion.
    """
    if not isinstance(pattern, str) or not pattern:
        raise TypeError(f"pattern must be a non-empty string, a name in {sorted(PATTERNS)} "
                        f"or a regex, got {pattern!r}")
    if pattern in PATTERNS:
        return PATTERNS[pattern]
    if pattern.replace("-", "").lower() in PATTERNS:
        suggestion = pattern.replace("-", "").lower()
        raise ValueError(f"unknown pattern name {pattern!r}; did you mean {suggestion!r}? "
                         f"Known names: {sorted(PATTERNS)}")
    try:
        regex.compile(pattern)
    except regex.error as exc:
        raise ValueError(f"pattern {pattern!r} is neither a known name {sorted(PATTERNS)} "
                         f"nor a valid regular expression ({exc})") from exc
    return pattern


def pretokenize(text: str, pattern: str = GPT4_SPLIT_PATTERN) -> list[str]:
    """Cut ``text`` into the words BPE works inside. Concatenated, the words give back
    ``text`` exactly."""
    return regex.findall(resolve_pattern(pattern), text)


def special_token_regex(special_tokens: Iterable[str]) -> regex.Pattern | None:
    """A regex matching any of ``special_tokens`` (longest first, so that no token hides a
    longer one)."""
    tokens = sorted(set(special_tokens), key=lambda s: (-len(s), s))
    return regex.compile("|".join(regex.escape(t) for t in tokens)) if tokens else None


def split_on_special(
    text: str, special_tokens: Iterable[str]
) -> Iterator[tuple[str, bool]]:
    """Yield ``(segment, is_special)`` in order: the ordinary text between special tokens,
    and the tokens."""
    pattern = special_token_regex(special_tokens)
    if pattern is None:
        if text:
            yield text, False
        return
    start = 0
    for match in pattern.finditer(text):
        if match.start() > start:
            yield text[start : match.start()], False
        yield match.group(), True
        start = match.end()
    if start < len(text):
        yield text[start:], False


def count_words(
    texts: str | Iterable[str],
    pattern: str = GPT4_SPLIT_PATTERN,
    special_tokens: Iterable[str] = (ENDOFTEXT,),
) -> Counter[bytes]:
    """How often each word (as UTF-8 bytes) occurs in ``texts``: the only statistics BPE
    training needs.

    Special tokens are cut out first and not counted: they get ids of their own and are
    never merged. Training counts each distinct word once, with its frequency, instead of
    walking the whole text at every merge: the 4 MB of training plays hold about a million
    words but only ~32,000 distinct ones.
    """
    compiled = regex.compile(resolve_pattern(pattern))
    specials = list(special_tokens)
    counts: Counter[str] = Counter()
    for text in [texts] if isinstance(texts, str) else texts:
        if not isinstance(text, str):
            raise TypeError(f"training text must be str, got {type(text).__name__}")
        for segment, is_special in split_on_special(text, specials):
            if not is_special:
                counts.update(compiled.findall(segment))
    return Counter({word.encode("utf-8"): n for word, n in counts.items()})


def check_special_tokens(special_tokens: Mapping[str, int] | Iterable[str]) -> None:
    """Special tokens must be non-empty strings; they are matched literally, anywhere in the
    text."""
    for token in special_tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
