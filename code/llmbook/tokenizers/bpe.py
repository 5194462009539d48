"""Byte-level BPE, the clear version: training that recounts every pair at every merge.

Chapter 2 builds the tokenizer from this file. A token is a byte string; the vocabulary
starts with the 256 single bytes (ids 0..255), so any text can be encoded and nothing is
ever unknown. Training repeats one step: count how often each adjacent pair of tokens occurs
in the training words, and merge the most frequent pair into a new token, whose id is the
next free one (256, 257, ...). The list of merges *is* the tokenizer.

The words come from pre-tokenization (:mod:`llmbook.tokenizers.regex`), each with its count,
as in the original BPE for machine translation (Sennrich et al., 2016). This trainer
recounts all pairs of all words at every merge, so a merge costs time proportional to the
whole word list; :mod:`llmbook.tokenizers.fast` learns the same merges while touching only
the words a merge changes.

**Tie-breaking** (documented, so that training is deterministic and the two trainers agree):
the pair with the highest count wins; among equal counts, the pair ``(left, right)`` with
the smallest ids in lexicographic order wins, the rule HF ``tokenizers`` uses. A token's id
is smaller the earlier it was made, so ties go to the pair of the oldest tokens (for two
single bytes: the smaller bytes).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Mapping, Sequence

Pair = tuple[int, int]
# (pair, new id, count): progress bars, statistics
OnMerge = Callable[[Pair, int, int], None]
N_BYTES = 256  # ids 0..255 are the single bytes


def pair_counts(words: Mapping[tuple[int, ...], int]) -> Counter[Pair]:
    """How often each adjacent pair occurs in ``words`` (token-id tuples), weighted by their
    counts."""
    counts: Counter[Pair] = Counter()
    for word, n in words.items():
        for pair in zip(word, word[1:]):
            counts[pair] += n
    return counts


def best_pair(counts: Mapping[Pair, int]) -> Pair:
    """The pair to merge next: the highest count, ties broken by the smallest ``(left,
    right)``."""
    return min(counts, key=lambda pair: (-counts[pair], pair))


def merge(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids``, scanning left to right, by
    ``new_id``.

    Occurrences cannot overlap: in ``a a a`` the pair ``(a, a)`` is merged once, giving ``aa
    a``.
    """
    out: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_naive(
    word_counts: Mapping[bytes, int], num_merges: int, on_merge: OnMerge | None = None
) -> list[Pair]:
    """Learn up to ``num_merges`` merges from words (UTF-8 bytes) and their counts.

    Merge ``i`` makes id ``256 + i``. Training stops early when no pair is left (every word
    is a single token). Each step recounts all pairs: O(total length of the distinct words)
    per merge. ``on_merge(pair, new_id, count)`` is called after each merge.
    """
    if num_merges < 0:
        raise ValueError(f"num_merges must be non-negative, got {num_merges}")
    words: dict[tuple[int, ...], int] = {}
    for word, n in word_counts.items():
        words[tuple(word)] = words.get(tuple(word), 0) + n
    merges: list[Pair] = []
    while len(merges) < num_merges:
        counts = pair_counts(words)
        if not counts:
            break
        pair = best_pair(counts)
        new_id = N_BYTES + len(merges)
        merges.append(pair)
        words = {tuple(merge(word, pair, new_id)): n for word, n in words.items()}
        if on_merge is not None:
            on_merge(pair, new_id, counts[pair])
    return merges


def vocab_from_merges(merges: Sequence[Pair]) -> list[bytes]:
    """The byte string of every id: the 256 bytes, then each merge's two halves joined."""
    vocab = [bytes([b]) for b in range(N_BYTES)]
    for left, right in merges:
        vocab.append(vocab[left] + vocab[right])
    return vocab


def encode_with_merges(word: bytes, merges: Sequence[Pair]) -> list[int]:
    """Encode one word by replaying the merges: apply the earliest-learned merge present,
    repeat.

    This is the direct reading of training (a word is split exactly as training would have
    split it). It is slow, and it needs the merge list;
    :class:`llmbook.tokenizers.Tokenizer` encodes from token ranks alone, as tiktoken does,
    and a test checks that both agree.
    """
    rank = {pair: N_BYTES + i for i, pair in enumerate(merges)}
    ids = list(word)
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, float("inf")))
        if pair not in rank:
            break
        ids = merge(ids, pair, rank[pair])
    return ids


def decode_bytes(ids: Sequence[int], vocab: Sequence[bytes]) -> bytes:
    """Concatenate the byte strings of ``ids``: decoding is a table lookup."""
    return b"".join(vocab[i] for i in ids)
