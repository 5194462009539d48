"""The tokenizer object: encode with ranks (as tiktoken does), decode, special tokens,
streaming; and training.

Chapter 2 explains each part. A byte-level BPE tokenizer is fully described by three things:

- ``ranks``: every mergeable token (a byte string) and its id, which is also its *rank*:
  when encoding a word, the adjacent pair whose concatenation has the lowest rank is merged
  first. For a tokenizer we train, the rank of a merged token is the step at which training
  learned it, so encoding replays training. Ranks are all a tokenizer needs, which is how
  GPT-4's ``cl100k_base`` is published: 100,256 byte strings and their ranks, and no merge
  list. (Its single bytes are *not* ranked 0..255 in byte order: ``!`` is 0.)
- ``pattern``: the pre-tokenization regex (:mod:`llmbook.tokenizers.regex`).
- ``special_tokens``: strings such as ``<|endoftext|>`` with ids of their own, outside the
  ranks.

Encoding follows tiktoken exactly, so that our pure-Python encoder and tiktoken's Rust
engine give the same ids for the same ranks (tests check it on the held-out plays and on
adversarial text): a word that is a token is that token; otherwise start from single bytes
and repeatedly merge the lowest-ranked adjacent pair, the leftmost one on ties, one
occurrence at a time.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import AbstractSet, Collection, Iterable, Iterator, Literal, Mapping, Sequence

import regex

from llmbook.tokenizers import bpe, fast
from llmbook.tokenizers.regex import (
    ENDOFTEXT, PATTERNS, check_special_tokens, count_words, resolve_pattern,
)

LONG_WORD = 128  # bytes; longer words are merged with a heap,
                 # in O(n log n) instead of O(n^2)
CACHE_LIMIT = 1 << 16  # words remembered per encode call; bounds the memory of streaming


class DisallowedSpecialTokenError(ValueError):
    """The text contains a special token's string, and the caller did not say how to
    treat it."""


@dataclass(frozen=True)
class BPEConfig:
    """How to train a byte-level BPE tokenizer. ``vocab_size`` counts everything: 256 bytes,
    merges, specials."""

    vocab_size: int
    pattern: str = "gpt4"  # a name in llmbook.tokenizers.regex.PATTERNS, or a regex
    special_tokens: tuple[str, ...] = (ENDOFTEXT,)
    trainer: Literal["fast", "naive"] = "fast"

    def __post_init__(self) -> None:
        if not isinstance(self.special_tokens, tuple):
            raise TypeError(f"special_tokens must be a tuple of strings, "
                            f"got {type(self.special_tokens).__name__}")
        check_special_tokens(self.special_tokens)
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise ValueError(f"special_tokens has duplicates: {self.special_tokens}")
        minimum = bpe.N_BYTES + len(self.special_tokens)
        if not isinstance(self.vocab_size, int) or self.vocab_size < minimum:
            raise ValueError(f"vocab_size must be an int >= {minimum} (256 bytes + "
                             f"{len(self.special_tokens)} special tokens), "
                             f"got {self.vocab_size!r}")
        if self.trainer not in ("fast", "naive"):
            raise ValueError(f"trainer must be 'fast' or 'naive', got {self.trainer!r}")
        resolve_pattern(self.pattern)

    @property
    def num_merges(self) -> int:
        return self.vocab_size - bpe.N_BYTES - len(self.special_tokens)


class Tokenizer:
    """A byte-level BPE tokenizer: ranks, a split pattern and special tokens; ``merges`` if
    we trained it."""

    def __init__(
        self,
        ranks: Mapping[bytes, int],
        pattern: str,
        special_tokens: Mapping[str, int] | None = None,
        *,
        name: str = "bpe",
        merges: Sequence[bpe.Pair] | None = None,
    ) -> None:
        self.ranks = dict(ranks)
        self.pattern = resolve_pattern(pattern)
        self.special_tokens = dict(special_tokens or {})
        self.name = name
        self.merges = None if merges is None else [tuple(pair) for pair in merges]
        self._check()
        self._split = regex.compile(self.pattern)
        self._vocab: dict[int, bytes] = {rank: token for token, rank in self.ranks.items()}
        self._vocab.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})
        self._special_ids = frozenset(self.special_tokens.values())

    def _check(self) -> None:
        for token, rank in self.ranks.items():
            if not isinstance(token, bytes) or not token:
                raise TypeError(f"ranks must map non-empty bytes to ids, "
                                f"found key {token!r}")
            if not isinstance(rank, int) or rank < 0:
                raise ValueError(f"ranks must be non-negative ints, "
                                 f"found {token!r}: {rank!r}")
        if len(set(self.ranks.values())) != len(self.ranks):
            raise ValueError("ranks are not unique: two tokens share an id")
        missing = [b for b in range(256) if bytes([b]) not in self.ranks]
        if missing:
            raise ValueError(f"ranks lack {len(missing)} single bytes (e.g. "
                             f"{bytes([missing[0]])!r}): a byte-level tokenizer needs all "
                             "256 so that every text can be encoded")
        check_special_tokens(self.special_tokens)
        clash = set(self.special_tokens.values()) & set(self.ranks.values())
        if clash or len(set(self.special_tokens.values())) != len(self.special_tokens):
            clashing = sorted(clash)[:5] or "duplicated among special tokens"
            raise ValueError(f"special token ids must be distinct and outside the ranks; "
                             f"clashing ids: {clashing}")

    # -------------------------------------------------------------------------------------
    # Construction from training
    # -------------------------------------------------------------------------------------

    @classmethod
    def from_merges(
        cls,
        merges: Sequence[bpe.Pair],
        pattern: str,
        special_tokens: Sequence[str] = (),
        *,
        name: str = "bpe",
    ) -> "Tokenizer":
        """The tokenizer of a merge list: ids 0..255 bytes, 256+i merge i, then the special
        tokens in order."""
        vocab = bpe.vocab_from_merges(merges)
        ranks = {token: rank for rank, token in enumerate(vocab)}
        if len(ranks) != len(vocab):
            raise ValueError("the merges produce the same byte string twice; ranks would "
                             "be ambiguous")
        specials = {token: len(vocab) + j for j, token in enumerate(special_tokens)}
        return cls(ranks, pattern, specials, name=name, merges=merges)

    def truncated(self, vocab_size: int) -> "Tokenizer":
        """The tokenizer training would have produced with a smaller ``vocab_size`` (its
        first merges).

        BPE is greedy, so training for fewer merges gives exactly a prefix of the merge
        list: one run at the largest size gives every smaller tokenizer. Special tokens are
        renumbered after the kept merges.
        """
        if self.merges is None:
            raise ValueError(f"{self.name!r} has no merge list (it was built from ranks); "
                             "only trained tokenizers can be truncated")
        n_special = len(self.special_tokens)
        num_merges = vocab_size - bpe.N_BYTES - n_special
        if not 0 <= num_merges <= len(self.merges):
            raise ValueError(f"vocab_size must be in [{bpe.N_BYTES + n_special}, "
                             f"{self.n_vocab}], got {vocab_size}")
        specials = sorted(self.special_tokens, key=self.special_tokens.get)
        return Tokenizer.from_merges(self.merges[:num_merges], self.pattern, specials,
                                     name=f"{self.name}[:{vocab_size}]")

    # -------------------------------------------------------------------------------------
    # Vocabulary
    # -------------------------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        """One more than the largest id: the size of a model's embedding table for this
        tokenizer."""
        return max(self._vocab) + 1

    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self._vocab[token_id]
        except KeyError:
            raise ValueError(f"token id {token_id!r} is not in the vocabulary of "
                             f"{self.name!r} (ids lie in [0, {self.n_vocab}))") from None

    def __repr__(self) -> str:
        return (f"Tokenizer(name={self.name!r}, n_vocab={self.n_vocab}, "
                f"mergeable={len(self.ranks)}, special={len(self.special_tokens)})")

    # -------------------------------------------------------------------------------------
    # Encoding
    # -------------------------------------------------------------------------------------

    def _bpe(self, word: bytes) -> list[int]:
        """The ids of one pre-tokenized word: the lowest-ranked adjacent pair is merged
        first, leftmost on ties."""
        rank = self.ranks.get(word)
        if rank is not None:
            return [rank]  # as in tiktoken: a word that is a token is that token
        if len(word) > LONG_WORD:
            return self._bpe_heap(word)
        ranks = self.ranks
        parts = [word[i : i + 1] for i in range(len(word))]
        pair_ranks = [ranks.get(parts[i] + parts[i + 1]) for i in range(len(parts) - 1)]
        while True:
            best, best_rank = -1, None
            for i, r in enumerate(pair_ranks):
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best_rank is None:
                break
            parts[best : best + 2] = [parts[best] + parts[best + 1]]
            del pair_ranks[best]
            if best > 0:
                pair_ranks[best - 1] = ranks.get(parts[best - 1] + parts[best])
            if best < len(parts) - 1:
                pair_ranks[best] = ranks.get(parts[best] + parts[best + 1])
        return [ranks[part] for part in parts]

    def _bpe_heap(self, word: bytes) -> list[int]:
        """:meth:`_bpe` for long words, with a heap of ``(rank, start)`` and a linked list
        of parts.

        Same rule and result (lowest rank first, leftmost on ties), in O(n log n) instead of
        O(n^2): a run of 100,000 spaces is a single pre-token, and the quadratic loop would
        take minutes on it.
        """
        ranks, n = self.ranks, len(word)
        end = list(range(1, n + 1))  # end[i]: where the part starting at byte i ends
        prev = list(range(-1, n - 1))
        alive = [True] * n
        heap = [(r, i) for i in range(n - 1)
                if (r := ranks.get(word[i : i + 2])) is not None]
        heapq.heapify(heap)
        while heap:
            r, i = heapq.heappop(heap)
            j = end[i] if alive[i] else n
            if j >= n or ranks.get(word[i : end[j]]) != r:
                continue  # stale: a neighbour changed since this entry was pushed
            alive[j] = False  # absorb the right neighbour j into part i
            end[i] = end[j]
            if end[i] < n:
                prev[end[i]] = i
                if (rr := ranks.get(word[i : end[end[i]]])) is not None:
                    heapq.heappush(heap, (rr, i))
            if prev[i] >= 0 and (rl := ranks.get(word[prev[i] : end[i]])) is not None:
                heapq.heappush(heap, (rl, prev[i]))
        out, i = [], 0
        while i < n:
            out.append(ranks[word[i : end[i]]])
            i = end[i]
        return out

    def _encode_word(self, word: str, cache: dict[str, list[int]]) -> list[int]:
        """BPE of one pre-token, memoised: in running text most words recur, and BPE is the
        costly part."""
        ids = cache.get(word)
        if ids is None:
            ids = self._bpe(word.encode("utf-8"))
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[word] = ids
        return ids

    def _encode_text(self, text: str, cache: dict[str, list[int]]) -> list[int]:
        """Ordinary text (no special tokens) to ids: split with the pattern, BPE each
        word."""
        ids: list[int] = []
        for word in self._split.findall(text):
            ids.extend(self._encode_word(word, cache))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` treating special-token strings as ordinary text."""
        return self._encode_text(_fix_surrogates(_check_text(text)), {})

    def _resolve_special(
        self,
        allowed_special: Literal["all"] | AbstractSet[str],
        disallowed_special: Literal["all"] | Collection[str],
    ) -> tuple[frozenset[str], frozenset[str]]:
        all_special = frozenset(self.special_tokens)
        allowed = all_special if allowed_special == "all" else frozenset(allowed_special)
        unknown = allowed - all_special
        if unknown:
            raise ValueError(f"allowed_special names tokens {sorted(unknown)} that "
                             f"{self.name!r} does not have; its special tokens are "
                             f"{sorted(all_special)}")
        if disallowed_special == "all":
            disallowed = all_special - allowed
        else:
            disallowed = frozenset(disallowed_special)
        return allowed, disallowed

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Encode ``text``, with tiktoken's rules for special tokens.

        By default no special token is allowed and all are disallowed: text containing
        ``<|endoftext|>`` raises :class:`DisallowedSpecialTokenError`, because silently
        turning user text into a control token is a security problem (prompt injection).
        Pass ``allowed_special={"<|endoftext|>"}`` (or ``"all"``) to encode it as its
        special id, or ``disallowed_special=()`` to encode it as ordinary text.
        """
        text = _fix_surrogates(_check_text(text))
        allowed, disallowed = self._resolve_special(allowed_special, disallowed_special)
        _raise_if_disallowed(text, disallowed)
        return list(self._encode_segments(text, allowed, {}))

    def _encode_segments(
        self, text: str, allowed: frozenset[str], cache: dict
    ) -> Iterator[int]:
        if not allowed:
            yield from self._encode_text(text, cache)
            return
        special = _special_regex(allowed)
        start = 0
        for match in special.finditer(text):
            yield from self._encode_text(text[start : match.start()], cache)
            yield self.special_tokens[match.group()]
            start = match.end()
        yield from self._encode_text(text[start:], cache)

    def encode_iterable(
        self,
        chunks: Iterable[str],
        *,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> Iterator[int]:
        """Encode a stream of text chunks (e.g. the lines of a large file) in bounded
        memory.

        Yields exactly the ids of ``encode("".join(chunks))``. A word or a special token may
        straddle two chunks, so the tail that could still change is held back: the last
        pre-token of the buffer (the next chunk may extend it) and any suffix that could
        begin a special token. Memory is bounded by the longest pre-token, not by the
        stream. A disallowed special token raises when it is reached, after the ids before
        it have been yielded.
        """
        allowed, disallowed = self._resolve_special(allowed_special, disallowed_special)
        watched = frozenset(allowed | disallowed)
        special = _special_regex(watched) if watched else None
        cache: dict[str, list[int]] = {}
        buffer = ""
        for chunk in chunks:
            buffer += _fix_surrogates(_check_text(chunk))
            limit = len(buffer) - _special_prefix_len(buffer, watched)
            # Up to the end of the last special token, the text is complete: encode it as
            # encode() would.
            done = 0
            if special is not None:
                for match in special.finditer(buffer, 0, limit):
                    done = match.end()
            if done:
                head, buffer, limit = buffer[:done], buffer[done:], limit - done
                _raise_if_disallowed(head, disallowed)
                yield from self._encode_segments(head, allowed, cache)
            # After it, every pre-token but the last is final (the patterns look ahead at
            # most one character and never behind, so scanning on from here gives the same
            # words as scanning the whole text).
            words = list(self._split.finditer(buffer, 0, limit))
            if len(words) > 1:
                for match in words[:-1]:
                    yield from self._encode_word(match.group(), cache)
                buffer = buffer[words[-1].start() :]
        _raise_if_disallowed(buffer, disallowed)
        yield from self._encode_segments(buffer, allowed, cache)

    # -------------------------------------------------------------------------------------
    # Decoding
    # -------------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of ``ids``, concatenated (special tokens as their UTF-8 text)."""
        vocab, ids = self._vocab, list(ids)
        try:
            return b"".join(vocab[i] for i in ids)
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or i not in vocab)
            raise ValueError(f"token id {bad!r} is not in the vocabulary of {self.name!r} "
                             f"(ids lie in [0, {self.n_vocab}))") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of ``ids``. A slice of ids can end inside a multi-byte character;
        ``errors="replace"`` then shows U+FFFD instead of raising, as tiktoken does
        (``errors="strict"`` raises)."""
        return self.decode_bytes(list(ids)).decode("utf-8", errors=errors)


# -----------------------------------------------------------------------------------------
# Helpers
# -----------------------------------------------------------------------------------------


def _check_text(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text to encode must be str, got {type(text).__name__}; "
                        "decode bytes first (e.g. data.decode('utf-8'))")
    return text


def _fix_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded; like tiktoken, replace them with U+FFFD (and
    join pairs)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


_SPECIAL_REGEX_CACHE: dict[frozenset[str], regex.Pattern] = {}


def _special_regex(tokens: frozenset[str]) -> regex.Pattern:
    if tokens not in _SPECIAL_REGEX_CACHE:
        # longest first: none hides one
        ordered = sorted(tokens, key=lambda s: (-len(s), s))
        pattern = "|".join(regex.escape(t) for t in ordered)
        _SPECIAL_REGEX_CACHE[tokens] = regex.compile(pattern)
    return _SPECIAL_REGEX_CACHE[tokens]


def _raise_if_disallowed(text: str, disallowed: frozenset[str]) -> None:
    if disallowed and (match := _special_regex(disallowed).search(text)):
        raise DisallowedSpecialTokenError(
            f"the text contains the special token {match.group()!r} at character "
            f"{match.start()}, which is disallowed. To encode it as the special token, "
            f"pass allowed_special={{{match.group()!r}}} (or 'all'); to encode it as "
            "ordinary text, pass disallowed_special=() (or a set without it)."
        )


def _special_prefix_len(buffer: str, special_tokens: Collection[str]) -> int:
    """Length of the longest suffix of ``buffer`` that is a proper prefix of a special token
    (0 if none)."""
    longest = 0
    for token in special_tokens:
        for k in range(min(len(token) - 1, len(buffer)), longest, -1):
            if buffer.endswith(token[:k]):
                longest = k
                break
    return longest


def train_bpe(
    text: str | Iterable[str],
    config: BPEConfig,
    *,
    name: str | None = None,
    on_merge: bpe.OnMerge | None = None,
    progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``text`` (a string, or an iterable of documents).

    Special tokens appearing in the text split it and are never merged; they get the last
    ids. If the text runs out of pairs before ``config.vocab_size`` is reached, the
    vocabulary is smaller (check ``n_vocab``). ``on_merge(pair, new_id, count)`` is called
    after every merge; ``progress=True`` shows a progress bar.
    """
    word_counts = count_words(text, config.pattern, config.special_tokens)
    train = fast.train_fast if config.trainer == "fast" else bpe.train_naive
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.num_merges, desc="BPE merges", unit="merge", leave=False)
        callback = on_merge

        def on_merge(pair: bpe.Pair, new_id: int, count: int) -> None:
            bar.update(1)
            if callback is not None:
                callback(pair, new_id, count)

    merges = train(word_counts, config.num_merges, on_merge)
    if progress:
        bar.close()
    label = config.pattern if config.pattern in PATTERNS else "custom"
    return Tokenizer.from_merges(merges, config.pattern, config.special_tokens,
                                 name=name or f"bpe-{label}-{config.vocab_size}")
