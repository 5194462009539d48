"""Tokenization (Chapter 2): byte-level BPE from scratch, checked against tiktoken,
SentencePiece and HF.

Each module is one idea, building on the previous one:

- :mod:`~llmbook.tokenizers.bpe`: BPE training and encoding, the clear (naive) version;
- :mod:`~llmbook.tokenizers.fast`: the same training, incremental, with a priority queue;
- :mod:`~llmbook.tokenizers.regex`: pre-tokenization patterns (GPT-2, GPT-4) and special
  tokens;
- :mod:`~llmbook.tokenizers.tokenizer`: the :class:`Tokenizer` (encode as tiktoken does,
  decode, streaming) and :func:`train_bpe`;
- :mod:`~llmbook.tokenizers.io`: saving and loading (our versioned JSON, and tiktoken's
  ``.tiktoken``);
- :mod:`~llmbook.tokenizers.tiktoken_export`: to and from ``tiktoken.Encoding``; GPT-4's
  ``cl100k_base`` and GPT-4o's ``o200k_base``;
- :mod:`~llmbook.tokenizers.baselines`: word-level, SentencePiece and HF tokenizers for
  comparison;
- :mod:`~llmbook.tokenizers.display`: showing tokens (printable bytes, coloured text);
- :mod:`~llmbook.tokenizers.book`: the book's tokenizer and token files, cached for later
  chapters.
"""

from llmbook.tokenizers.bpe import train_naive
from llmbook.tokenizers.book import book_token_file, book_tokenizer, cl100k_token_file
from llmbook.tokenizers.fast import train_fast
from llmbook.tokenizers.io import (
    TokenizerFileError, load, load_tiktoken, save, save_tiktoken,
)
from llmbook.tokenizers.regex import (
    ENDOFTEXT, GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, GPT4O_SPLIT_PATTERN, PATTERNS,
    count_words,
)
from llmbook.tokenizers.tiktoken_export import (
    cl100k_base, cl100k_encoding, from_tiktoken, o200k_base, o200k_encoding, to_tiktoken,
)
from llmbook.tokenizers.tokenizer import (
    BPEConfig, DisallowedSpecialTokenError, Tokenizer, train_bpe,
)

__all__ = [
    "BPEConfig", "DisallowedSpecialTokenError", "ENDOFTEXT", "GPT2_SPLIT_PATTERN",
    "GPT4_SPLIT_PATTERN", "GPT4O_SPLIT_PATTERN", "PATTERNS", "Tokenizer",
    "TokenizerFileError", "book_token_file", "book_tokenizer", "cl100k_base",
    "cl100k_encoding", "cl100k_token_file", "count_words", "from_tiktoken", "load",
    "load_tiktoken", "o200k_base", "o200k_encoding", "save", "save_tiktoken", "to_tiktoken",
    "train_bpe", "train_fast", "train_naive",
]
