"""The book's named configurations: ``cpu`` (minutes on a laptop) and ``gpu`` (full size on
one GPU).

Every chapter takes a ``profile`` parameter and looks it up here; this module is the single
place where the two editions differ. Each chapter's settings are a small frozen dataclass,
validated on construction, and a :class:`Profile` bundles one of each.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class DataSettings:
    """Chapter 1: how the data-loading demo cuts the token stream into training examples."""

    block_size: int  # tokens of context per example
    batch_size: int

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.batch_size < 1:
            raise ValueError(f"block_size and batch_size must be positive, got "
                             f"{self.block_size}, {self.batch_size}")


@dataclass(frozen=True)
class TokenizerSettings:
    """Chapter 2: the book's BPE tokenizer (used by every later chapter) and the sizes of
    the experiments."""

    vocab_size: int  # the book tokenizer: 256 bytes + merges + <|endoftext|>
    # one training run to this size gives every smaller vocabulary (bytes per token curve)
    sweep_max_vocab: int
    naive_sample_chars: int  # training text for the naive-versus-fast trainer comparison
    naive_vocab_size: int

    def __post_init__(self) -> None:
        if not 257 < self.vocab_size <= self.sweep_max_vocab:
            raise ValueError(f"need 257 < vocab_size <= sweep_max_vocab, got "
                             f"{self.vocab_size}, {self.sweep_max_vocab}")
        if self.naive_sample_chars < 1 or self.naive_vocab_size <= 257:
            raise ValueError(f"naive_sample_chars must be positive and naive_vocab_size "
                             f"> 257, got {self.naive_sample_chars}, "
                             f"{self.naive_vocab_size}")


@dataclass(frozen=True)
class AttentionSettings:
    """Chapter 3: the attention-only model whose attention maps the chapter draws, and the
    cost sweep."""

    lm_block_size: int  # context of the attention-only model (bytes)
    lm_d_model: int
    lm_n_heads: int
    lm_batch_size: int
    lm_steps: int
    lm_lr: float
    # sequence lengths of the time and memory sweep, ascending
    cost_seq_lens: tuple[int, ...]
    cost_dtype: str  # "float32" or "bfloat16"
    cost_repeats: int  # timed runs per point (the fastest is reported: load only adds time)

    def __post_init__(self) -> None:
        sizes = (self.lm_block_size, self.lm_d_model, self.lm_n_heads, self.lm_batch_size,
                 self.lm_steps, self.cost_repeats)
        if min(sizes) < 1:
            raise ValueError(f"attention settings must be positive, got {self}")
        if self.lm_d_model % self.lm_n_heads:
            raise ValueError(f"lm_d_model={self.lm_d_model} must be divisible by "
                             f"lm_n_heads={self.lm_n_heads}")
        if not self.lm_lr > 0:
            raise ValueError(f"lm_lr must be positive, got {self.lm_lr}")
        lens = self.cost_seq_lens
        if len(lens) < 2 or min(lens) < 1 or list(lens) != sorted(set(lens)):
            raise ValueError(f"cost_seq_lens must be at least two increasing positive "
                             f"lengths, got {lens}")
        if self.cost_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"cost_dtype must be 'float32' or 'bfloat16', got "
                             f"{self.cost_dtype!r}")


@dataclass(frozen=True)
class ModelSettings:
    """Chapter 4: the book's model for this profile and the sizes of the chapter's sanity
    checks."""

    preset: str  # a name in llmbook.model.PRESETS: the model the later chapters train
    overfit_batch_size: int  # sequences in the single batch the model must memorise
    overfit_steps: int
    overfit_lr: float
    norm_layers: int  # depth of the pre-norm versus post-norm comparison
    norm_block_size: int
    norm_batch_size: int
    norm_steps: int
    # deliberately high and without warm-up: the setting where post-norm struggles
    norm_lr: float
    # tokens generated when timing decoding with and without the KV cache
    gen_new_tokens: int
    # batch sizes of the decode-step timing (GPT-2 small's shape), ascending, and the
    # steps timed at each
    decode_batches: tuple[int, ...]
    decode_repeats: int

    def __post_init__(self) -> None:
        # tests/test_model.py checks the name against llmbook.model.PRESETS, so that this
        # module does not import the model code.
        if not isinstance(self.preset, str) or not self.preset:
            raise ValueError(f"preset must name a model preset (llmbook.model.PRESETS), "
                             f"got {self.preset!r}")
        sizes = (self.overfit_batch_size, self.overfit_steps, self.norm_layers,
                 self.norm_block_size, self.norm_batch_size, self.norm_steps,
                 self.gen_new_tokens, self.decode_repeats, *self.decode_batches)
        if min(sizes) < 1:
            raise ValueError(f"model settings sizes must be positive, got {self}")
        if len(self.decode_batches) < 2 or list(self.decode_batches) != sorted(
                set(self.decode_batches)):
            raise ValueError(f"decode_batches must be two or more increasing batch sizes, "
                             f"got {self.decode_batches}")
        if not (self.overfit_lr > 0 and self.norm_lr > 0):
            raise ValueError(f"learning rates must be positive, got {self.overfit_lr}, "
                             f"{self.norm_lr}")


@dataclass(frozen=True)
class TrainSettings:
    """Chapter 5: pretraining the book's model (``llmbook.train``); its shape is
    ``ModelSettings.preset``."""

    steps: int  # optimizer steps
    batch_size: int  # sequences per micro-batch (each of the preset's block_size tokens)
    grad_accum: int  # micro-batches per optimizer step
    lr: float  # peak learning rate, reached at the end of warm-up
    min_lr: float  # the floor the cosine decays to
    warmup_steps: int
    weight_decay: float  # on matrices and embeddings only
    beta1: float
    beta2: float
    grad_clip: float  # maximum global gradient norm; 0 turns clipping off
    dropout: float
    eval_interval: int  # steps between evaluations on training and held-out text
    # tokens of each split scored at an interval (the final evaluation reads all of it)
    eval_tokens: int
    log_interval: int  # steps between training-loss records
    dtype: str  # "float32" or "bfloat16" (autocast; the weights stay float32)
    compile: bool  # torch.compile the model for training
    optimizer: str  # "ours" (llmbook.optim.AdamW), "torch" or "fused" (torch.optim.AdamW)
    keep_best: bool  # keep the weights with the lowest held-out loss seen at an evaluation

    def __post_init__(self) -> None:
        sizes = (self.steps, self.batch_size, self.grad_accum, self.eval_interval,
                 self.eval_tokens, self.log_interval)
        if min(sizes) < 1:
            raise ValueError(f"train settings sizes must be positive integers, got {self}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"need 0 <= warmup_steps < steps, got {self.warmup_steps}, "
                             f"{self.steps}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, "
                             f"lr={self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, "
                             f"{self.beta2}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"weight_decay and grad_clip must be >= 0, got "
                             f"{self.weight_decay}, {self.grad_clip}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.optimizer not in ("ours", "torch", "fused"):
            raise ValueError(f"optimizer must be 'ours', 'torch' or 'fused', got "
                             f"{self.optimizer!r}")


@dataclass(frozen=True)
class TrainDemoSettings:
    """Chapter 5: the sizes of the chapter's side experiments (kept apart from
    TrainSettings, which determines the book's model, so that changing them does not retrain
    it)."""

    # the small model of the overfitting experiment: the preset, fewer layers ...
    overfit_layers: int
    overfit_width: int  # ... and a narrower residual stream
    overfit_train_tokens: int  # the training tokens it sees, again and again
    overfit_batch_size: int
    overfit_steps: int
    overfit_lr: float
    overfit_dropout: float  # the dropout it is compared with (against none)
    sample_tokens: int  # tokens generated for each sampling strategy
    # the learning-rate sweep: the book's model at these multiples of its learning rate,
    # each run lr_sweep_steps long with its schedule scaled to that length
    lr_sweep_factors: tuple[float, ...]
    lr_sweep_steps: int

    def __post_init__(self) -> None:
        sizes = (self.overfit_layers, self.overfit_width, self.overfit_train_tokens,
                 self.overfit_batch_size, self.overfit_steps, self.sample_tokens,
                 self.lr_sweep_steps)
        if min(sizes) < 1:
            raise ValueError(f"train demo sizes must be positive integers, got {self}")
        factors = self.lr_sweep_factors
        if len(factors) < 3 or min(factors) <= 0 or list(factors) != sorted(set(factors)) \
                or 1 not in factors:
            raise ValueError("lr_sweep_factors must be at least three increasing positive "
                             f"multiples of the learning rate, 1 among them, got {factors}")
        if not self.overfit_lr > 0:
            raise ValueError(f"overfit_lr must be positive, got {self.overfit_lr}")
        if not 0 <= self.overfit_dropout < 1:
            raise ValueError(f"overfit_dropout must be in [0, 1), got "
                             f"{self.overfit_dropout}")


@dataclass(frozen=True)
class ScaleSettings:
    """Chapter 6: the sizes of the chapter's measurements (memory, checkpointing,
    precision, data parallelism, communication, MFU)."""

    seq_lens: tuple[int, ...]  # memory versus sequence length, with and without checkpoints
    batch_size: int  # the micro-batch of the memory and checkpointing measurements
    precision_steps: int  # the fp32 versus bf16-autocast run, in steps
    dp_steps: int  # steps of the data-parallel equality runs (2 gloo processes)
    allreduce_sizes: tuple[int, ...]  # bytes per measured all-reduce (the alpha-beta fit)
    allreduce_repeats: int  # rounds over all sizes (the fastest of each size counts)
    repeats: int  # timing repeats (the fastest counts)
    mfu_steps: int  # timed steps of the step-speed measurements (compile, bf16, MFU)

    def __post_init__(self) -> None:
        sizes = (self.batch_size, self.precision_steps, self.dp_steps, self.repeats,
                 self.mfu_steps, self.allreduce_repeats)
        if min(sizes) < 1 or not self.seq_lens or min(self.seq_lens) < 1:
            raise ValueError(f"scale sizes must be positive integers, got {self}")
        if list(self.seq_lens) != sorted(set(self.seq_lens)):
            raise ValueError(f"seq_lens must increase, got {self.seq_lens}")
        if len(self.allreduce_sizes) < 2 or min(self.allreduce_sizes) < 1:
            raise ValueError("allreduce_sizes needs at least two positive sizes (a line "
                             f"has two constants), got {self.allreduce_sizes}")


@dataclass(frozen=True)
class AlignSettings:
    """Chapter 8: post-training the book's model (``llmbook.align.stages``): the task, the
    item counts and each stage's steps and learning rate."""

    task: str  # the task with checkable answers every stage trains and is measured on
    n_train: int  # training items (SFT examples; prompts for DPO and GRPO)
    n_test: int  # held-out items, from the validation and test scenes
    batch_size: int  # conversations (or pairs) per step
    sft_steps: int
    sft_lr: float
    rm_steps: int
    rm_lr: float
    best_of: int  # answers sampled per prompt for reward-model best-of-n
    dpo_steps: int
    dpo_lr: float
    dpo_beta: float
    grpo_steps: int
    grpo_lr: float
    grpo_prompts: int  # prompts per GRPO step
    grpo_group: int  # answers sampled per prompt
    grpo_kl: float  # weight of the KL penalty to the reference (0: none)
    temperature: float  # sampling temperature for best-of-n and GRPO
    max_new_tokens: int  # the longest answer sampled
    val_tokens: int  # validation tokens scored for bits per character
    # reward hacking: GRPO on the meter task (the other GRPO settings as above)
    meter_max_new_tokens: int  # the longest line sampled
    meter_n_test: int  # held-out meter prompts scored

    def __post_init__(self) -> None:
        sizes = (self.n_train, self.n_test, self.batch_size, self.sft_steps,
                 self.rm_steps, self.best_of, self.dpo_steps, self.grpo_steps,
                 self.grpo_prompts, self.max_new_tokens, self.val_tokens,
                 self.meter_max_new_tokens, self.meter_n_test)
        if min(sizes) < 1 or self.grpo_group < 2:
            raise ValueError(f"align sizes must be positive (grpo_group >= 2), got {self}")
        if min(self.sft_lr, self.rm_lr, self.dpo_lr, self.grpo_lr, self.dpo_beta) <= 0:
            raise ValueError(f"learning rates and dpo_beta must be positive, got {self}")
        if self.grpo_kl < 0 or not self.temperature > 0:
            raise ValueError(f"need grpo_kl >= 0 and temperature > 0, got {self}")


@dataclass(frozen=True)
class ScalingSettings:
    """Chapter 7: the book's IsoFLOP sweep (``llmbook.scaling.sweep``). Every shape has
    ``d_model = width_per_layer * n_layer`` and heads of ``head_dim``; each is trained on
    ``D = C / flops_per_token`` tokens for each budget ``C`` in ``budgets``."""

    budgets: tuple[float, ...]  # training FLOPs, ascending
    n_layers: tuple[int, ...]  # the shapes' depths, ascending
    width_per_layer: int
    head_dim: int
    block_size: int
    batch_size: int  # sequences per optimizer step
    lr: float
    min_lr: float
    warmup_fraction: float  # of each run's steps
    min_steps: int  # a run shorter than this is refused (its schedule would mean little)
    curve_points: int  # training-loss records per run (Approach 1's curves)
    eval_tokens: int  # validation tokens scored at the end of each run
    bootstrap_resamples: int  # for Approaches 1 and 2
    parametric_resamples: int  # for Approach 3 (each refit costs an L-BFGS search)
    workers: int = 1  # sweep runs trained at once, in processes sharing the CPU threads

    def __post_init__(self) -> None:
        if len(self.budgets) < 3 or len(self.n_layers) < 3:
            raise ValueError(f"an IsoFLOP sweep needs 3+ budgets and 3+ shapes, got "
                             f"{self.budgets}, {self.n_layers}")
        for seq in (self.budgets, self.n_layers):
            if min(seq) <= 0 or list(seq) != sorted(set(seq)):
                raise ValueError(f"budgets and n_layers must be positive and "
                                 f"increasing, got {seq}")
        sizes = (self.width_per_layer, self.head_dim, self.block_size, self.batch_size,
                 self.min_steps, self.curve_points, self.eval_tokens,
                 self.bootstrap_resamples, self.parametric_resamples)
        if min(sizes) < 1:
            raise ValueError(f"scaling settings sizes must be positive, got {self}")
        if self.width_per_layer % self.head_dim:
            raise ValueError(f"width_per_layer={self.width_per_layer} must be a multiple "
                             f"of head_dim={self.head_dim}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got {self.min_lr}, {self.lr}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got "
                             f"{self.warmup_fraction}")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device: str  # "cpu" or "cuda"
    data: DataSettings
    tokenizer: TokenizerSettings
    attention: AttentionSettings
    model: ModelSettings
    train: TrainSettings
    train_demos: TrainDemoSettings
    scale: ScaleSettings
    align: AlignSettings
    scaling: ScalingSettings
    seed: int = 1337

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")


PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu",
        description="runs on a laptop CPU (2 cores) in minutes; what CI executes",
        device="cpu",
        data=DataSettings(block_size=64, batch_size=8),
        tokenizer=TokenizerSettings(vocab_size=2048, sweep_max_vocab=8192,
                                    naive_sample_chars=200_000, naive_vocab_size=512),
        attention=AttentionSettings(lm_block_size=64, lm_d_model=64, lm_n_heads=4,
                                    lm_batch_size=32, lm_steps=800, lm_lr=1e-2,
                                    cost_seq_lens=(256, 512, 1024, 2048),
                                    cost_dtype="float32", cost_repeats=3),
        model=ModelSettings(preset="book-cpu", overfit_batch_size=4, overfit_steps=200,
                            overfit_lr=1.5e-3, norm_layers=6, norm_block_size=64,
                            norm_batch_size=16, norm_steps=120, norm_lr=3e-3,
                            gen_new_tokens=256, decode_batches=(1, 4, 16, 64),
                            decode_repeats=10),
        train=TrainSettings(steps=1600, batch_size=16, grad_accum=1, lr=2e-3, min_lr=2e-4,
                            warmup_steps=20, weight_decay=0.1, beta1=0.9, beta2=0.99,
                            grad_clip=1.0, dropout=0.0, eval_interval=50,
                            eval_tokens=4096, log_interval=10, dtype="float32",
                            compile=False, optimizer="fused", keep_best=False),
        train_demos=TrainDemoSettings(overfit_layers=2, overfit_width=64,
                                      overfit_train_tokens=8192, overfit_batch_size=4,
                                      overfit_steps=300, overfit_lr=3e-3,
                                      overfit_dropout=0.2, sample_tokens=120,
                                      lr_sweep_factors=(0.25, 0.5, 1.0, 2.0, 4.0),
                                      lr_sweep_steps=200),
        scale=ScaleSettings(seq_lens=(32, 64, 128, 256), batch_size=2, precision_steps=30,
                            dp_steps=3, allreduce_sizes=(2**12, 2**16, 2**19, 2**21),
                            allreduce_repeats=100, repeats=3, mfu_steps=20),
        align=AlignSettings(task="play", n_train=1000, n_test=300, batch_size=16,
                            sft_steps=150, sft_lr=1e-3, rm_steps=100, rm_lr=1e-3,
                            best_of=4, dpo_steps=60, dpo_lr=3e-4, dpo_beta=0.1,
                            grpo_steps=20, grpo_lr=3e-4, grpo_prompts=8, grpo_group=8,
                            grpo_kl=0.05, temperature=1.0, max_new_tokens=12,
                            val_tokens=32768, meter_max_new_tokens=24, meter_n_test=200),
        scaling=ScalingSettings(budgets=(1e11, 3e11, 8e11), n_layers=(1, 2, 3, 4),
                                width_per_layer=8, head_dim=8, block_size=64,
                                batch_size=16, lr=5e-3, min_lr=5e-4, warmup_fraction=0.1,
                                min_steps=15, curve_points=20, eval_tokens=16384,
                                bootstrap_resamples=200, parametric_resamples=8,
                                workers=2),
    ),
    "gpu": Profile(
        name="gpu",
        description="full size, on one CUDA GPU (H100 class)",
        device="cuda",
        data=DataSettings(block_size=256, batch_size=64),
        tokenizer=TokenizerSettings(vocab_size=8192, sweep_max_vocab=16384,
                                    naive_sample_chars=1_000_000, naive_vocab_size=1024),
        attention=AttentionSettings(lm_block_size=128, lm_d_model=128, lm_n_heads=4,
                                    lm_batch_size=64, lm_steps=3000, lm_lr=3e-3,
                                    cost_seq_lens=(512, 1024, 2048, 4096, 8192, 16384),
                                    cost_dtype="bfloat16", cost_repeats=10),
        model=ModelSettings(preset="book-gpu", overfit_batch_size=16, overfit_steps=300,
                            overfit_lr=1e-3, norm_layers=6, norm_block_size=64,
                            norm_batch_size=16, norm_steps=120, norm_lr=3e-3,
                            gen_new_tokens=1024, decode_batches=(1, 16, 64, 256),
                            decode_repeats=30),
        train=TrainSettings(steps=3000, batch_size=64, grad_accum=1, lr=1e-3, min_lr=1e-4,
                            warmup_steps=100, weight_decay=0.1, beta1=0.9, beta2=0.99,
                            grad_clip=1.0, dropout=0.2, eval_interval=250,
                            eval_tokens=1 << 18, log_interval=25, dtype="bfloat16",
                            compile=True, optimizer="fused", keep_best=True),
        # width 192: a multiple of book-gpu's 6 heads (128 is not, and cannot build)
        train_demos=TrainDemoSettings(overfit_layers=2, overfit_width=192,
                                      overfit_train_tokens=32768, overfit_batch_size=16,
                                      overfit_steps=1000, overfit_lr=1e-3,
                                      overfit_dropout=0.2, sample_tokens=300,
                                      lr_sweep_factors=(0.25, 0.5, 1.0, 2.0, 4.0),
                                      lr_sweep_steps=600),
        scale=ScaleSettings(seq_lens=(256, 512, 1024, 2048), batch_size=4,
                            precision_steps=300, dp_steps=5,
                            allreduce_sizes=(2**12, 2**16, 2**20, 2**23),
                            allreduce_repeats=100, repeats=5, mfu_steps=30),
        align=AlignSettings(task="play", n_train=1150, n_test=350, batch_size=64,
                            sft_steps=600, sft_lr=3e-4, rm_steps=300, rm_lr=3e-4,
                            best_of=8, dpo_steps=300, dpo_lr=1e-4, dpo_beta=0.1,
                            grpo_steps=100, grpo_lr=1e-4, grpo_prompts=32, grpo_group=8,
                            grpo_kl=0.05, temperature=1.0, max_new_tokens=16,
                            val_tokens=1 << 18, meter_max_new_tokens=32, meter_n_test=400),
        scaling=ScalingSettings(budgets=(1e14, 2e14, 4e14, 8e14, 1.6e15),
                                n_layers=(2, 3, 4, 5, 6, 7), width_per_layer=64,
                                head_dim=32, block_size=256, batch_size=32, lr=2e-3,
                                min_lr=2e-4, warmup_fraction=0.05, min_steps=50,
                                curve_points=40, eval_tokens=1 << 17,
                                bootstrap_resamples=200, parametric_resamples=50,
                                workers=1),
    ),
}


def get_profile(name: str, *, check_device: bool = True) -> Profile:
    """The profile called ``name``; an unknown name, or ``gpu`` without a GPU, is a clear
    error."""
    if name not in PROFILES:
        valid = ", ".join(repr(p) for p in PROFILES)
        raise ValueError(f"unknown profile {name!r}; valid profiles are {valid}")
    profile = PROFILES[name]
    if check_device and profile.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"profile {name!r} needs a CUDA GPU, but torch.cuda.is_available() is False "
            "on this machine; run with profile='cpu' instead"
        )
    return profile


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so that a run repeats exactly on one
    machine."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def start(name: str) -> Profile:
    """What a chapter's first code cell calls: validate the profile, seed everything, return
    the profile."""
    profile = get_profile(name)
    seed_everything(profile.seed)
    return profile
