"""Training: the run configuration, the loop, evaluation, checkpoints and the book's
pretrained model. Chapter 5 builds it; Chapters 6 to 8 plug into it.

- :mod:`~llmbook.train.config`: :class:`TrainConfig`, everything that determines a run;
- :mod:`~llmbook.train.loop`: :class:`Trainer`, one loop for every objective, with a hook
  that wraps the model (data parallelism, checkpointing, compilation);
- :mod:`~llmbook.train.evaluation`: held-out text scored every token once;
- :mod:`~llmbook.train.checkpoint`: a run's state in one checksummed file;
- :mod:`~llmbook.train.pretrained` and :mod:`~llmbook.train.book`: the book's pretrained
  model, trained once per profile and cached.

The objective lives in :mod:`llmbook.objectives`, batches in :mod:`llmbook.batches`.
Outside a notebook: ``python -m llmbook.train --profile cpu`` (``--help`` lists the
options).
"""

from llmbook.train.book import book_splits, learning_rate_sweep, pretrained_model
from llmbook.train.checkpoint import CheckpointError, load_checkpoint
from llmbook.train.config import TrainConfig
from llmbook.train.evaluation import EvalResult, TextEvaluator, TokenSplit, evaluate
from llmbook.train.loop import Trainer
from llmbook.train.pretrained import (Pretrained, PretrainSpec, cached_pretrained,
                                      finish_run, load_pretrained)

__all__ = ["CheckpointError", "EvalResult", "PretrainSpec", "Pretrained", "TextEvaluator",
           "TokenSplit", "TrainConfig", "Trainer", "book_splits", "cached_pretrained",
           "evaluate", "finish_run", "learning_rate_sweep", "load_checkpoint",
           "load_pretrained", "pretrained_model"]
