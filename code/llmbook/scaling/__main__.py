"""The budget calculator: ``python -m llmbook.scaling --flops 1e21`` or ``--gpus 8
--hours 24 --gpu h100 --mfu 0.4``. Chapter 7 works through an example.

Prints, for the budget, each law's compute-optimal N and D, the loss each law predicts
for the chosen model, its tokens per parameter and its wall time; with
``--inference-tokens``, also the model of equal loss that is cheapest over training plus
a lifetime of inference.
"""

from __future__ import annotations

import argparse
import math
import sys

from llmbook.measure import PEAK_FLOPS
from llmbook.scaling.budget import (
    flops_for_hours,
    hours_for_flops,
    inference_aware_optimum,
    peak_flops,
)
from llmbook.scaling.laws import LAWS, tokens_per_parameter_rule


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (exit status 2, as argparse's)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m llmbook.scaling",
        description="Compute-optimal model size and tokens for a "
        "budget, by the Chinchilla laws (Chapter 7).",
    )
    p.add_argument("--flops", type=float, help="training budget in FLOPs, e.g. 1e21")
    p.add_argument("--hours", type=float, help="wall-clock hours (instead of --flops)")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs (default 1)")
    p.add_argument(
        "--gpu", default="h100", help=f"one of {sorted(g.lower() for g in PEAK_FLOPS)}"
    )
    p.add_argument(
        "--mfu",
        type=float,
        default=0.4,
        help="model FLOPs utilisation, in (0, 1] (default 0.4)",
    )
    p.add_argument(
        "--law",
        choices=sorted(LAWS),
        default="besiroglu",
        help="the law that picks the model (default besiroglu)",
    )
    p.add_argument(
        "--inference-tokens",
        type=float,
        help="tokens the model will serve in its lifetime",
    )
    return p


def _budget(args, parser: argparse.ArgumentParser) -> float:
    if (args.flops is None) == (args.hours is None):
        parser.error("give exactly one of --flops or --hours")
    try:
        peak_flops(args.gpu)
        if args.flops is not None:
            if not (args.flops > 0 and math.isfinite(args.flops)):
                raise ValueError(f"--flops must be positive, got {args.flops:g}")
            hours_for_flops(args.flops, gpus=args.gpus, gpu=args.gpu, mfu=args.mfu)
            return args.flops
        return flops_for_hours(args.hours, gpus=args.gpus, gpu=args.gpu, mfu=args.mfu)
    except ValueError as err:
        parser.error(str(err))


def report(
    flops: float,
    law_name: str,
    *,
    gpus: int,
    gpu: str,
    mfu: float,
    inference_tokens: float | None = None,
) -> str:
    """The calculator's answer as text."""
    hours = hours_for_flops(flops, gpus=gpus, gpu=gpu, mfu=mfu)
    lines = [
        f"budget: {flops:.3g} FLOPs = {hours:,.1f} h on {gpus} x {gpu.upper()} "
        f"at MFU {mfu:g}",
        "",
        f"{'rule':<16}{'N (params)':>12}{'D (tokens)':>12}{'D/N':>7}"
        + "".join(f"{'loss ' + name:>17}" for name in LAWS),
    ]
    rules = {name: law.optimal(flops) for name, law in LAWS.items()}
    rules["20 tokens/param"] = tokens_per_parameter_rule(flops)
    for name, (n, d) in rules.items():
        mark = "*" if name == law_name else " "
        losses = "".join(f"{law.loss(n, d):>17.3f}" for law in LAWS.values())
        lines.append(f"{mark}{name:<15}{n:>12.3g}{d:>12.3g}{d / n:>7.1f}{losses}")
    lines.append(
        f"(* chosen by --law {law_name}; losses in nats/token on the papers' data)"
    )
    if inference_tokens is not None:
        law = LAWS[law_name]
        n, d = rules[law_name]
        target = law.loss(n, d)
        choice = inference_aware_optimum(law, target, inference_tokens)
        plain = 6 * n * d + 2 * n * inference_tokens
        hours = hours_for_flops(choice.training_flops, gpus=gpus, gpu=gpu, mfu=mfu)
        lines += [
            "",
            f"inference-aware ({inference_tokens:.3g} tokens served, same loss "
            f"{target:.3f}): N = {choice.n_params:.3g}, D = {choice.tokens:.3g} "
            f"({choice.tokens_per_parameter:.0f} tokens/param)",
            f"  training + inference: {choice.total_flops:.3g} FLOPs against "
            f"{plain:.3g} for the compute-optimal model "
            f"({1 - choice.total_flops / plain:.1%} less); training alone "
            f"{hours:,.1f} h",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flops = _budget(args, parser)
    served = args.inference_tokens
    if served is not None and not (served >= 0 and math.isfinite(served)):
        parser.error(f"--inference-tokens must be non-negative, got {served:g}")
    print(
        report(
            flops,
            args.law,
            gpus=args.gpus,
            gpu=args.gpu,
            mfu=args.mfu,
            inference_tokens=args.inference_tokens,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
