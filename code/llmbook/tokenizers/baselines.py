"""The tokenizers ours is compared with in Chapter 2: word-level, SentencePiece (BPE and
Unigram), HF BPE.

- :class:`WordLevelTokenizer` is what came before subwords: a vocabulary of whole words from
  the training split and one ``<unk>`` id for everything else. It shows the problem BPE
  solves: held-out plays are full of words (names, archaic spellings) that the training
  plays never used. It also loses whitespace.
- :class:`SentencePieceTokenizer` wraps Google's SentencePiece (C++), the library behind T5
  and Llama 1-2. It treats the text as a raw stream, with the space turned into a visible
  marker ``▁`` (U+2581) that pieces may begin with, and trains BPE or the Unigram language
  model. ``byte_fallback=True`` spells characters outside the vocabulary as byte pieces
  ``<0xE2>``, so nothing is unknown.
- :func:`train_hf_bpe` trains HF ``tokenizers``' byte-level BPE (Rust) with our split
  pattern: the same algorithm as ours, the reference for the training-speed target and the
  cross-check of our merges.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import regex

from llmbook.tokenizers.regex import ENDOFTEXT, GPT4_SPLIT_PATTERN, resolve_pattern

# -----------------------------------------------------------------------------------------
# Word level
# -----------------------------------------------------------------------------------------

# A word: letters with inner apostrophes ("o'er", "lov'd"), a number, or one punctuation
# mark.
WORD_PATTERN = r"\p{L}+(?:'\p{L}+)*|\p{N}+|[^\s\p{L}\p{N}]"
UNK = "<unk>"


class WordLevelTokenizer:
    """One id per word seen in training (``min_count`` times or more); ``<unk>`` (id 0) for
    every other word."""

    def __init__(self, vocab: Sequence[str], *, name: str = "word-level") -> None:
        if not vocab or vocab[0] != UNK or len(set(vocab)) != len(vocab):
            raise ValueError(f"vocab must start with {UNK!r} and hold distinct words")
        self.vocab = list(vocab)
        self.ids = {word: i for i, word in enumerate(self.vocab)}
        self.name = name
        self._split = regex.compile(WORD_PATTERN)

    @classmethod
    def train(
        cls, text: str, *, min_count: int = 1, max_size: int | None = None
    ) -> "WordLevelTokenizer":
        """Words by decreasing frequency (ties alphabetical), those seen at least
        ``min_count`` times."""
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        counts = Counter(regex.findall(WORD_PATTERN, text))
        kept = (w for w, n in counts.items() if n >= min_count)
        words = sorted(kept, key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - 1]
        return cls([UNK, *words])

    @property
    def n_vocab(self) -> int:
        return len(self.vocab)

    def words(self, text: str) -> list[str]:
        return self._split.findall(text)

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(word, 0) for word in self.words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Words joined by single spaces: line breaks, spacing and unknown words are
        lost."""
        return " ".join(self.vocab[i] for i in ids)


# -----------------------------------------------------------------------------------------
# SentencePiece
# -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentencePieceConfig:
    """SentencePiece training options. Defaults keep the text exactly (no normalisation, no
    space folding)."""

    vocab_size: int
    model_type: Literal["bpe", "unigram"] = "bpe"
    byte_fallback: bool = True
    character_coverage: float = 1.0
    num_threads: int = 2

    def __post_init__(self) -> None:
        if self.model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', "
                             f"got {self.model_type!r}")
        # <unk> <s> </s>, the byte pieces, and at least one real piece
        minimum = 3 + (256 if self.byte_fallback else 0) + 1
        if self.vocab_size < minimum:
            raise ValueError(f"vocab_size must be at least {minimum} for these options, "
                             f"got {self.vocab_size}")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ValueError(f"character_coverage must be in (0, 1], "
                             f"got {self.character_coverage}")


class SentencePieceTokenizer:
    """A trained SentencePiece model (held as its serialised bytes) with
    ``encode``/``decode``."""

    def __init__(self, model: bytes, *, name: str = "sentencepiece") -> None:
        import sentencepiece as spm

        if not isinstance(model, bytes) or not model:
            raise TypeError("model must be the non-empty bytes of a SentencePiece model")
        self.model = model
        self.processor = spm.SentencePieceProcessor(model_proto=model)
        self.name = name

    @classmethod
    def train(
        cls, documents: Iterable[str], config: SentencePieceConfig
    ) -> "SentencePieceTokenizer":
        """Train on ``documents`` (for the plays: one speech per document, line breaks
        inside).

        SentencePiece calls its training units sentences; ours are speeches of up to a few
        thousand bytes, so the length limit is raised. Normalisation is off (``identity``)
        and runs of spaces are kept, so decoding gives back the exact text.
        """
        import sentencepiece as spm

        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(documents)),
            model_writer=model,
            vocab_size=config.vocab_size,
            model_type=config.model_type,
            byte_fallback=config.byte_fallback,
            character_coverage=config.character_coverage,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            max_sentence_length=1 << 16,
            num_threads=config.num_threads,
            minloglevel=2,
        )
        name = f"sentencepiece-{config.model_type}-{config.vocab_size}"
        return cls(model.getvalue(), name=name)

    @property
    def n_vocab(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.processor.decode(list(ids))

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.processor.id_to_piece(i) for i in ids]

    def piece_texts(self, ids: Iterable[int]) -> list[str]:
        """Each piece's text for display: ``▁`` back to a space, a byte piece ``<0x0A>`` to
        its character (U+FFFD for a byte of a multi-byte character)."""
        texts = []
        for i in ids:
            if self.processor.is_byte(i):
                value = int(self.processor.id_to_piece(i)[3:-1], 16)
                texts.append(chr(value) if value < 0x80 else "\ufffd")
            else:
                texts.append(self.processor.id_to_piece(i).replace("\u2581", " "))
        return texts

    def count_unknown(self, ids: Iterable[int]) -> int:
        return sum(self.processor.is_unknown(i) for i in ids)

    def count_byte_fallback(self, ids: Iterable[int]) -> int:
        return sum(self.processor.is_byte(i) for i in ids)


# -----------------------------------------------------------------------------------------
# HF tokenizers
# -----------------------------------------------------------------------------------------


def train_hf_bpe(
    texts: str | Iterable[str],
    vocab_size: int,
    pattern: str = GPT4_SPLIT_PATTERN,
    special_tokens: Sequence[str] = (ENDOFTEXT,),
):
    """HF ``tokenizers`` byte-level BPE with our split pattern; returns a
    ``tokenizers.Tokenizer``.

    The regex split comes first, then HF's ByteLevel step maps each byte to a printable
    character (GPT-2's trick: a space shows as ``Ġ``, a line break as ``Ċ``) without
    splitting again.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(resolve_pattern(pattern)), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([texts] if isinstance(texts, str) else texts, trainer)
    return tokenizer


def hf_merges(tokenizer) -> list[tuple[bytes, bytes]]:
    """The merges of an HF byte-level BPE tokenizer, as pairs of byte strings (undoing the
    ByteLevel mapping)."""
    import json

    from llmbook.tokenizers.display import UNICODE_TO_BYTE

    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    pairs = [m.split(" ", 1) if isinstance(m, str) else m for m in merges]
    return [tuple(bytes(UNICODE_TO_BYTE[c] for c in part) for part in pair)
            for pair in pairs]
