"""Benchmark for Chapter 2: BPE training time and memory against HF tokenizers and
SentencePiece, the naive versus fast trainer, and encoding throughput in pure Python versus
tiktoken. Prints one JSON object.

    python benchmarks/tokenizer_train.py            # full: the whole training split at vocabulary 8192
    python benchmarks/tokenizer_train.py --quick    # under a minute: smaller inputs, same measurements

Each trainer runs in a fresh child process, so that its peak resident memory (``ru_maxrss``) is
its own; the child also reports the resident memory it had before training started (the corpus
text and the libraries). Training times include pre-tokenization for every library.

Each reference is fed the way its documentation recommends. HF ``tokenizers`` gets an iterator
of documents (one speech each) through ``train_from_iterator``: its Rust trainer counts words
of a batch of documents in parallel. SentencePiece gets its native input, a text file with one
sentence (here: one line of the plays) per line, and ``num_threads``. Both use ``--threads``
threads (default: every core; HF through ``RAYON_NUM_THREADS``); our trainer is
single-threaded Python. The report also times HF fed the whole text as one string, as this
benchmark used to: one string is one work item, so HF runs on a single thread and looks
slower than it is. ``ratio_fast_to_hf_tokenizers`` is the fair ratio;
``ratio_fast_to_hf_tokenizers_one_string`` the old one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _training_text(input_chars: int | None) -> str:
    from llmbook import data

    text = data.load_split("train")
    return text if input_chars is None else text[:input_chars]


def _train_sentencepiece_file(text: str, vocab_size: int, threads: int) -> None:
    """SentencePiece's own input mode: a file of one sentence per line (the plays' lines)."""
    import sentencepiece as spm

    from llmbook.tokenizers import baselines

    config = baselines.SentencePieceConfig(vocab_size, "bpe", num_threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "train.txt")
        with open(corpus, "w", encoding="utf-8") as handle:
            handle.write(text)
        # the same options as baselines.SentencePieceTokenizer.train, the input aside
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(tmp, "sp"), vocab_size=config.vocab_size,
            model_type=config.model_type, byte_fallback=config.byte_fallback,
            character_coverage=config.character_coverage, normalization_rule_name="identity",
            remove_extra_whitespaces=False, num_threads=config.num_threads, minloglevel=2,
        )


def worker(name: str, vocab_size: int, input_chars: int | None, threads: int) -> dict:
    """Run one trainer on the training text; runs in its own process (see main)."""
    from llmbook.tokenizers import BPEConfig, baselines, bpe, count_words, fast

    text = _training_text(input_chars)
    config = BPEConfig(vocab_size)
    result: dict = {"input_bytes": len(text.encode("utf-8"))}
    baseline = _rss_mb()
    start = time.perf_counter()
    if name in ("fast", "naive"):
        counts = count_words(text, config.pattern, config.special_tokens)
        counted = time.perf_counter()
        trainer = fast.train_fast if name == "fast" else bpe.train_naive
        merges = trainer(counts, config.num_merges)
        result["pretokenize_seconds"] = round(counted - start, 3)
        result["merges"] = len(merges)
        result["merges_hash"] = hashlib.sha256(repr(merges).encode()).hexdigest()[:16]
    elif name == "hf_tokenizers":  # documents through train_from_iterator, as HF recommends
        baselines.train_hf_bpe(iter(text.split("\n\n")), vocab_size)
    elif name == "hf_tokenizers_one_string":  # the old, unfair feed: a single work item
        baselines.train_hf_bpe(text, vocab_size)
    elif name == "sentencepiece_bpe":
        _train_sentencepiece_file(text, vocab_size, threads)
    else:
        raise ValueError(f"unknown trainer {name!r}")
    result["seconds"] = round(time.perf_counter() - start, 3)
    result["peak_rss_mb"] = round(_rss_mb(), 1)
    result["rss_before_training_mb"] = round(baseline, 1)
    return result


def run_worker(name: str, vocab_size: int, input_chars: int | None, threads: int) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--vocab-size", str(vocab_size),
               "--threads", str(threads)]
    if input_chars is not None:
        command += ["--input-chars", str(input_chars)]
    # RAYON_NUM_THREADS sizes HF tokenizers' thread pool; it must be set before the library loads
    env = {**os.environ, "PYTHONHASHSEED": "0", "RAYON_NUM_THREADS": str(threads)}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def encode_throughput(vocab_size: int, repeats: int) -> dict:
    from llmbook import data
    from llmbook.tokenizers import BPEConfig, cl100k_base, cl100k_encoding, to_tiktoken, train_bpe

    text = data.load_split("val") + "\n" + data.load_split("test")
    megabytes = len(text.encode("utf-8")) / 1e6
    ours = train_bpe(data.load_split("train"), BPEConfig(vocab_size))
    engines = {"ours_python": ours.encode, "ours_tiktoken": to_tiktoken(ours).encode,
               "cl100k_python": cl100k_base().encode, "cl100k_tiktoken": cl100k_encoding().encode}
    result: dict = {"text_bytes": int(megabytes * 1e6), "vocab_size": vocab_size, "repeats": repeats}
    for name, encode in engines.items():
        result[f"{name}_mb_per_s"] = round(megabytes / best_of(repeats, lambda: encode(text)), 2)
    result["identical_ids_ours"] = engines["ours_python"](text) == engines["ours_tiktoken"](text)
    result["identical_ids_cl100k"] = engines["cl100k_python"](text) == engines["cl100k_tiktoken"](text)
    speedup = result["ours_tiktoken_mb_per_s"] / result["ours_python_mb_per_s"]
    result["speedup_tiktoken_over_python"] = round(speedup, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs; finishes in under a minute")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for HF tokenizers and SentencePiece (default: every core)")
    parser.add_argument("--input-chars", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be positive, got {args.threads}")
    if args.worker:
        print(json.dumps(worker(args.worker, args.vocab_size, args.input_chars, args.threads)))
        return

    train_chars = 1_000_000 if args.quick else None
    vocab = 2048 if args.quick else args.vocab_size
    naive_chars, naive_vocab = (100_000, 400) if args.quick else (1_000_000, 1024)

    report: dict = {
        "benchmark": "tokenizer_train",
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1min_at_start": round(os.getloadavg()[0], 2)},
        "reference_threads": args.threads,
        "reference_inputs": {
            "hf_tokenizers": "train_from_iterator over the speeches (documents)",
            "hf_tokenizers_one_string": "train_from_iterator over [the whole text] (old, unfair)",
            "sentencepiece_bpe": "input= a text file, one line of the plays per line",
        },
    }
    names = ("fast", "hf_tokenizers", "hf_tokenizers_one_string", "sentencepiece_bpe")
    training = {name: run_worker(name, vocab, train_chars, args.threads) for name in names}
    fast_seconds = training["fast"]["seconds"]

    def ratio(name: str) -> float:
        return round(fast_seconds / training[name]["seconds"], 2)

    report["train"] = {
        "vocab_size": vocab,
        "input_bytes": training["fast"]["input_bytes"],
        **training,
        "ratio_fast_to_hf_tokenizers": ratio("hf_tokenizers"),
        "ratio_fast_to_hf_tokenizers_one_string": ratio("hf_tokenizers_one_string"),
        "ratio_fast_to_sentencepiece_bpe": ratio("sentencepiece_bpe"),
        "target_max_ratio_to_hf_tokenizers": 5.0,
    }
    report["train"]["meets_target"] = report["train"]["ratio_fast_to_hf_tokenizers"] <= 5.0

    naive = run_worker("naive", naive_vocab, naive_chars, args.threads)
    fast_small = run_worker("fast", naive_vocab, naive_chars, args.threads)
    report["naive_vs_fast"] = {
        "input_bytes": naive["input_bytes"], "vocab_size": naive_vocab,
        "naive_seconds": naive["seconds"], "fast_seconds": fast_small["seconds"],
        "naive_merge_seconds": round(naive["seconds"] - naive["pretokenize_seconds"], 3),
        "fast_merge_seconds": round(fast_small["seconds"] - fast_small["pretokenize_seconds"], 3),
        "speedup_total": round(naive["seconds"] / fast_small["seconds"], 1),
        "speedup_merges": round((naive["seconds"] - naive["pretokenize_seconds"])
                                / (fast_small["seconds"] - fast_small["pretokenize_seconds"]), 1),
        "identical_merges": (naive["merges_hash"], naive["merges"])
                            == (fast_small["merges_hash"], fast_small["merges"]),
    }
    report["encode"] = encode_throughput(vocab, repeats=2 if args.quick else 3)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
