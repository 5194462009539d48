"""A conversation with the book's aligned model on the command line. Chapter 8.

    python -m llmbook.chat --profile cpu [--stage grpo] [--temperature 0.7] [--top-k 50]

Each turn is rendered with the template the model was trained on
(:func:`llmbook.align.chat.render_prompt`), and the reply is sampled until ``<|end|>``.
An empty line, ``/quit`` or end of input ends the conversation. The model is the latest
one built for the profile (by Chapter 8, or by ``--build``); without one, a one-line
error says how to build it.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

import torch

from llmbook.align.chat import END, render_prompt
from llmbook.align.sampling import decode_reply, reply_ids
from llmbook.generate import generate

CHAT_STAGES = ("sft", "dpo", "grpo")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmbook.chat", description=__doc__.split(
        "\n")[0])
    p.add_argument("--profile", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--stage", default="grpo", choices=CHAT_STAGES,
                   help="which post-trained model to talk to (default: grpo)")
    p.add_argument("--temperature", type=float, default=0.7, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--build", action="store_true",
                   help="train the stage first if it has not been built (minutes)")
    return p


def reply(model, tokenizer, messages, *, max_new_tokens: int, temperature: float,
          top_k: int | None, top_p: float | None, generator: torch.Generator) -> str:
    """The model's next reply to ``messages`` (ending with a user turn). Older turns
    are dropped while the prompt and the reply would not fit in the context."""
    block = model.config.block_size
    messages = list(messages)
    ids = render_prompt(tokenizer, messages)
    while len(ids) + max_new_tokens > block and len(messages) > 1:
        messages = messages[2:]  # the oldest exchange
        ids = render_prompt(tokenizer, messages)
    ids = ids[-(block - 1):]
    device = next(model.parameters()).device
    out = generate(model, torch.tensor([ids], device=device), max_new_tokens,
                   temperature=temperature, top_k=top_k, top_p=top_p,
                   stop_tokens=[tokenizer.special_tokens[END]], generator=generator)
    new = out[0, len(ids):].tolist()
    return decode_reply(tokenizer, reply_ids(new, tokenizer.special_tokens[END]))


def main(argv: list[str] | None = None, stdin: TextIO = sys.stdin,
         stdout: TextIO = sys.stdout) -> int:
    args = _parser().parse_args(argv)
    from llmbook.align import stages
    from llmbook.profiles import get_profile

    path = stages.latest_stage(args.profile, args.stage)
    if path is None and args.build:
        builder = {"sft": stages.sft_stage, "dpo": stages.dpo_stage,
                   "grpo": stages.grpo_stage}[args.stage]
        path = builder(get_profile(args.profile)).path
    if path is None:
        print(f"error: no {args.stage} model has been built for profile "
              f"{args.profile!r}; execute chapters/08_alignment.ipynb or rerun with "
              "--build", file=sys.stderr)
        return 1
    device = "cuda" if args.profile == "gpu" and torch.cuda.is_available() else "cpu"
    stage = stages.load_stage(path, device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    messages: list[dict[str, str]] = []
    print(f"{args.stage} model of profile {args.profile} ({path.name}); "
          "an empty line ends", file=stdout)
    while True:
        print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line.strip() or line.strip() == "/quit":
            return 0
        messages.append({"role": "user", "content": line.rstrip("\n")})
        text = reply(stage.model, stage.tokenizer, messages,
                     max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p, generator=generator)
        messages.append({"role": "assistant", "content": text})
        print(f"model> {text}", file=stdout, flush=True)


if __name__ == "__main__":
    sys.exit(main())
