"""The chat format: role markers, rendering a conversation to ids with its training
mask, and parsing ids back. Chapter 8.

A base model continues text; an assistant takes turns. The turns are marked with special
tokens that no user text can produce:

    <|endoftext|><|user|>Who speaks ...?<|end|><|assistant|>MACBETH<|end|>

The book's tokenizer (Chapter 2) has only ``<|endoftext|>``, so the role markers are
added here, after its last id, and the pretrained model grows its embedding and output
matrices by as many rows (:func:`grow_vocabulary`). Reserving them in Chapter 2 instead
would mean retraining the book model and moving every number of Chapters 2 to 5.

:func:`render_conversation` returns the ids *and* the mask of the tokens that are
trained: the assistant's replies and the ``<|end|>`` that closes each (so the model
learns to stop), never the prompt. The mask is data made in one place, tested, and never
recomputed elsewhere.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from llmbook.tokenizers.regex import ENDOFTEXT
from llmbook.tokenizers.tokenizer import Tokenizer

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)
ROLE_MARKERS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
IGNORE_INDEX = (
    -100
)  # PyTorch's cross_entropy convention for a target that is not trained


def chat_tokenizer(base: Tokenizer) -> Tokenizer:
    """``base`` with the role markers appended as special tokens, after its largest
    id."""
    missing = [t for t in CHAT_TOKENS if t not in base.special_tokens]
    if not missing:
        return base
    if len(missing) != len(CHAT_TOKENS):
        raise ValueError(f"{base.name!r} has some chat tokens but lacks {missing}")
    start = base.n_vocab
    specials = {
        **base.special_tokens,
        **{t: start + i for i, t in enumerate(CHAT_TOKENS)},
    }
    return Tokenizer(
        base.ranks, base.pattern, specials, name=f"{base.name}+chat", merges=base.merges
    )


def _chat_ids(tokenizer: Tokenizer) -> dict[str, int]:
    missing = [
        t for t in (ENDOFTEXT,) + CHAT_TOKENS if t not in tokenizer.special_tokens
    ]
    if missing:
        raise ValueError(
            f"tokenizer {tokenizer.name!r} lacks the special tokens {missing}; "
            "wrap it with llmbook.align.chat.chat_tokenizer(tokenizer)"
        )
    return tokenizer.special_tokens


def _check_messages(messages: Sequence[Mapping[str, str]]) -> None:
    roles = []
    for i, message in enumerate(messages):
        if set(message) != {"role", "content"} or not isinstance(
            message["content"], str
        ):
            raise ValueError(
                f"message {i} must be a dict with a 'role' and a str 'content', "
                f"got {message!r}"
            )
        if message["role"] not in ROLE_MARKERS:
            raise ValueError(
                f"message {i} has role {message['role']!r}; roles are "
                f"{sorted(ROLE_MARKERS)}"
            )
        roles.append(message["role"])
    turns = roles[1:] if roles[:1] == ["system"] else roles
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    if not turns or turns != expected[: len(turns)]:
        raise ValueError(
            f"a conversation is an optional system message, then user and "
            f"assistant turns alternating from the user; got roles {roles}"
        )


def render_conversation(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]]
) -> tuple[list[int], list[int]]:
    """The ids of a conversation and its training mask, two lists of the same length.

    ``mask[i] = 1`` exactly for the tokens of assistant replies and the ``<|end|>``
    closing each. Message text is encoded as ordinary text: a user typing ``<|end|>``
    gets the bytes of that string, not the control token (no prompt injection through
    the template).
    """
    special = _chat_ids(tokenizer)
    _check_messages(messages)
    ids, mask = [special[ENDOFTEXT]], [0]
    for message in messages:
        trained = int(message["role"] == "assistant")
        content = tokenizer.encode(message["content"], disallowed_special=())
        ids += [special[ROLE_MARKERS[message["role"]]]] + content + [special[END]]
        mask += [0] + [trained] * len(content) + [trained]
    return ids, mask


def render_prompt(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, str]]
) -> list[int]:
    """The ids that ask for the next assistant reply: the conversation so far (ending
    with a user turn) and ``<|assistant|>``. Sampling then runs until ``<|end|>``."""
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("a prompt must end with a user message")
    ids, _ = render_conversation(tokenizer, messages)
    return ids + [_chat_ids(tokenizer)[ASSISTANT]]


def parse_conversation(
    tokenizer: Tokenizer, ids: Sequence[int]
) -> list[dict[str, str]]:
    """The messages of rendered ids: the inverse of :func:`render_conversation`.

    A last message without its ``<|end|>`` (a reply cut off by a length limit) is kept
    as it is.
    """
    special = _chat_ids(tokenizer)
    roles = {special[marker]: role for role, marker in ROLE_MARKERS.items()}
    ids = list(ids)
    if ids[:1] == [special[ENDOFTEXT]]:
        ids = ids[1:]
    messages: list[dict[str, str]] = []
    i = 0
    while i < len(ids):
        if ids[i] not in roles:
            raise ValueError(
                f"expected a role marker at position {i}, got id {ids[i]} "
                f"({tokenizer.decode([ids[i]])!r})"
            )
        role, i = roles[ids[i]], i + 1
        end = ids.index(special[END], i) if special[END] in ids[i:] else len(ids)
        body = ids[i:end]
        stray = [t for t in body if t in tokenizer.special_tokens.values()]
        if stray:
            raise ValueError(
                f"{role} message at position {i} holds special token id "
                f"{stray[0]} before its <|end|>"
            )
        messages.append({"role": role, "content": tokenizer.decode(body)})
        i = end + 1
    return messages


def sft_example(
    ids: Sequence[int], mask: Sequence[int], max_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets ``(T,)`` for supervised fine-tuning: ``x = ids[:-1]``, ``y =
    ids[1:]`` with :data:`IGNORE_INDEX` wherever the target token is not trained.
    Truncated to ``max_len`` positions (the model's context)."""
    if len(ids) != len(mask) or len(ids) < 2:
        raise ValueError(
            f"ids and mask must have the same length >= 2, got {len(ids)} and "
            f"{len(mask)}"
        )
    ids_t = torch.tensor(ids, dtype=torch.long)
    mask_t = torch.tensor(mask, dtype=torch.bool)
    x, y = ids_t[:-1], ids_t[1:].masked_fill(~mask_t[1:], IGNORE_INDEX)
    if max_len is not None:
        x, y = x[:max_len], y[:max_len]
    return x, y


@torch.no_grad()
def grow_vocabulary(model: nn.Module, n_new: int) -> nn.Module:
    """Add ``n_new`` token rows to a GPT's embedding and output matrices, in place.

    New rows start at the mean of the old embeddings (and of the old output rows when
    the head is not tied), so a new token begins as an average token rather than a
    random one (Hewitt, 2021). Old rows are copied, so every old logit is unchanged.
    Weight tying is kept, and ``model.config.vocab_size`` is updated. Grow before
    building the optimizer: the parameters are new tensors.
    """
    if not isinstance(n_new, int) or n_new < 1:
        raise ValueError(f"n_new must be a positive int, got {n_new!r}")
    old_emb, old_head = model.tok_emb.weight, model.lm_head.weight
    tied = old_head is old_emb
    V, C = old_emb.shape
    emb = nn.Embedding(V + n_new, C, device=old_emb.device, dtype=old_emb.dtype)
    emb.weight[:V] = old_emb
    emb.weight[V:] = old_emb.mean(0)
    head = nn.Linear(
        C, V + n_new, bias=False, device=old_head.device, dtype=old_head.dtype
    )
    if tied:
        head.weight = emb.weight
    else:
        head.weight[:V] = old_head
        head.weight[V:] = old_head.mean(0)
    model.tok_emb, model.lm_head = emb, head
    model.config = dataclasses.replace(model.config, vocab_size=V + n_new)
    return model
