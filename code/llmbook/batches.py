"""Token windows and batches: how a token stream becomes training examples. Chapter 1 cuts
the windows; Chapter 5 streams and scores them.

A window of a token stream ``ids`` starting at ``s`` is the input ``x = ids[s : s + T]`` and
the target ``y = ids[s + 1 : s + T + 1]``: at every position the next token. Everything in
this module cuts windows that way, through :func:`gather_windows`:

- :func:`encode_bytes`, :class:`ByteTokenizer` and :func:`byte_token_file`: UTF-8 bytes as
  tokens, the tokenizer of Chapter 1 (BPE comes in Chapter 2, :mod:`llmbook.tokenizers`);
- :class:`TokenWindows`, a PyTorch ``Dataset`` of windows at a fixed stride, and
  :class:`WindowBatchSampler`, endless seeded batches of window indices that resume exactly;
- :func:`random_windows`, windows at random offsets from a generator (Chapters 3 and 4);
- :class:`BatchStream`, the training batches of :class:`llmbook.train.Trainer`, and
  :func:`eval_windows`, which scores a held-out stream once, every token.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from llmbook import data
from llmbook.data import TokenFile


def encode_bytes(text: str) -> np.ndarray:
    """Byte-level token ids (0..255): the tokenizer of Chapter 1, before Chapter 2's BPE."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256), with the interface of the BPE tokenizers."""

    name = "bytes"
    n_vocab = 256

    def encode(self, text: str) -> list[int]:
        return encode_bytes(text).tolist()

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def byte_token_file(split: str,
                    config: data.CorpusConfig = data.CorpusConfig()) -> TokenFile:
    """The split encoded as bytes (vocabulary 256), cached next to the corpus."""
    if split not in data.SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {data.SPLITS}")
    corpus = data.build_corpus(config)
    path = corpus.path / "tokens" / f"bytes-{split}.bin"
    if not path.with_suffix(".json").is_file():
        ids = encode_bytes(data.load_split(split, config))
        data.write_token_file(path, ids, vocab_size=256, tokenizer="bytes")
    return TokenFile(path)


def gather_windows(ids: np.ndarray, starts: np.ndarray | Sequence[int],
                   block_size: int) -> tuple[Tensor, Tensor]:
    """Inputs and targets of the windows starting at ``starts``, ``x = ids[s : s + T]`` and
    ``y = ids[s + 1 : s + T + 1]``, read from the (memory-mapped) array in one indexing
    step."""
    rows = (np.asarray(starts, dtype=np.int64)[:, None]
            + np.arange(block_size + 1))  # (B, T+1)
    chunk = torch.from_numpy(np.asarray(ids)[rows].astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]  # (B, T), (B, T)


def _ids_of(tokens: TokenFile | np.ndarray | Tensor) -> np.ndarray:
    if isinstance(tokens, TokenFile):
        return tokens.ids
    return tokens.numpy() if isinstance(tokens, Tensor) else np.asarray(tokens)


def random_windows(tokens: TokenFile | np.ndarray | Tensor, block_size: int,
                   batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch_size`` windows at offsets drawn uniformly by ``generator``: the quick batches
    of the small experiments in Chapters 3 and 4 (the Trainer uses :class:`BatchStream`)."""
    ids = _ids_of(tokens)
    if len(ids) < block_size + 2:
        raise ValueError(f"a stream of {len(ids)} tokens is too short for windows of "
                         f"{block_size} + 1 tokens")
    starts = torch.randint(len(ids) - block_size - 1, (batch_size,), generator=generator)
    return gather_windows(ids, starts.numpy(), block_size)


class TokenWindows(Dataset):
    """Training examples cut from a token stream: window i is ``x = ids[s : s+T]``,
    ``y = ids[s+1 : s+T+1]``, with ``s = i * stride``.

    The default stride ``T`` makes windows that do not overlap, so in one pass over them
    every token is a target exactly once (except the very first token of the stream, which
    is never predicted).
    """

    def __init__(self, tokens: TokenFile | np.ndarray, block_size: int,
                 stride: int | None = None) -> None:
        self.ids = _ids_of(tokens)
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.stride = block_size if stride is None else stride
        if self.stride < 1:
            raise ValueError(f"stride must be positive, got {self.stride}")
        if len(self.ids) < block_size + 1:
            raise ValueError(f"a stream of {len(self.ids)} tokens is too short for one "
                             f"window of {block_size} + 1 tokens; use a smaller block_size")

    def __len__(self) -> int:
        return (len(self.ids) - self.block_size - 1) // self.stride + 1

    def start(self, index: int) -> int:
        """The offset of window ``index`` in the stream."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        return (index % len(self)) * self.stride

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = gather_windows(self.ids, [self.start(index)], self.block_size)
        return x[0], y[0]


class WindowBatchSampler(Sampler[list[int]]):
    """Endless batches of window indices: each epoch a fresh seeded permutation, cut into
    optimizer steps, each step into micro-batches.

    The stream is a pure function of (seed, position), so training can stop and resume
    exactly: save ``state_dict()`` with a checkpoint, ``load_state_dict`` it, and iteration
    continues with the next batch. For data-parallel training with ``accum`` micro-batches
    per step, an optimizer step reads the next ``batch_size * world_size * accum`` windows
    of the permutation, and rank ``r`` takes its ``i``-th micro-batch at offset
    ``(i * world_size + r) * batch_size`` among them. A step therefore reads the same
    windows however the global batch is cut into processes, micro-batches and accumulation,
    and the saved position (windows dealt to all ranks) lets a run resume on another number
    of processes.
    """

    def __init__(self, num_windows: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, accum: int = 1):
        if batch_size < 1 or accum < 1 or num_windows < batch_size * world_size * accum:
            raise ValueError(f"need batch_size, accum >= 1 and at least batch_size * "
                             f"world_size * accum = {batch_size * world_size * accum} "
                             f"windows per epoch, have {num_windows} windows, batch_size "
                             f"{batch_size}, accum {accum}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.num_windows, self.batch_size, self.seed = num_windows, batch_size, seed
        self.rank, self.world_size, self.accum = rank, world_size, accum
        self.step_windows = batch_size * world_size * accum  # one optimizer step, all ranks
        # the remainder is dropped each epoch
        self.batches_per_epoch = num_windows // self.step_windows * accum
        self.position = 0  # batches this rank has taken so far

    def _permutation(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_windows, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            epoch, first = divmod(self.position, self.batches_per_epoch)
            perm = self._permutation(epoch)
            for batch in range(first, self.batches_per_epoch):
                step, micro = divmod(batch, self.accum)
                start = (step * self.step_windows
                         + (micro * self.world_size + self.rank) * self.batch_size)
                self.position += 1
                yield perm[start : start + self.batch_size].tolist()

    def state_dict(self) -> dict:
        """The position as windows dealt to all ranks, which any cut of the same global
        batch can continue from."""
        return {"windows": self.position * self.batch_size * self.world_size,
                "seed": self.seed, "num_windows": self.num_windows}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed or state.get("num_windows") != self.num_windows:
            raise ValueError(f"sampler state is for seed {state.get('seed')} and "
                             f"{state.get('num_windows')} windows, this sampler has seed "
                             f"{self.seed} and {self.num_windows} windows")
        position, rest = divmod(int(state["windows"]), self.batch_size * self.world_size)
        if rest:
            raise ValueError(f"sampler state stopped after {state['windows']} windows, "
                             f"not a whole number of this sampler's micro-batches of "
                             f"{self.batch_size} x {self.world_size} ranks; resume with "
                             "the global batch of the run that wrote it")
        self.position = position


class BatchStream:
    """Endless training batches: windows at every offset of a token file, in a seeded order.

    A window is ``block_size + 1`` consecutive tokens and any offset can start one, so over
    the epochs the model sees each passage at every alignment. The order comes from
    :class:`WindowBatchSampler`, a pure function of (seed, position), so :meth:`state_dict`
    is all a checkpoint needs to continue the stream exactly. Batches are built on demand,
    never prefetched: the saved position is that of the next batch. They stay on the CPU;
    the Trainer moves them to its device.
    """

    def __init__(self, tokens: TokenFile, block_size: int, batch_size: int, *, seed: int,
                 rank: int = 0, world_size: int = 1, accum: int = 1) -> None:
        self.ids = tokens.ids
        self.block_size = block_size
        self.windows = TokenWindows(tokens, block_size, stride=1)
        self.sampler = WindowBatchSampler(len(self.windows), batch_size, seed=seed,
                                          rank=rank, world_size=world_size,
                                          accum=accum)
        self._batches: Iterator[list[int]] | None = None

    def next_batch(self) -> tuple[Tensor, Tensor]:
        if self._batches is None:
            self._batches = iter(self.sampler)
        return gather_windows(self.ids, next(self._batches), self.block_size)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._batches = None  # iteration restarts at the restored position


def eval_windows(n_tokens: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Window starts and, per window, the number of leading targets to skip, such that the
    windows score every token after the first exactly once.

    Windows lie end to end (``0, T, 2T, ...``); the last one is pulled back to end where the
    stream ends, and it skips the targets its neighbour already scored.
    """
    if n_tokens < block_size + 1:
        raise ValueError(f"{n_tokens} tokens are too few for one window of "
                         f"{block_size} + 1")
    n_windows = math.ceil((n_tokens - 1) / block_size)
    nominal = np.arange(n_windows, dtype=np.int64) * block_size
    starts = np.minimum(nominal, n_tokens - 1 - block_size)
    return starts, nominal - starts  # the skip is positive only for the last window
