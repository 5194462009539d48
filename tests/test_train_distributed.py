"""Tests for training on several processes (Chapter 6): torchrun's environment, the
Trainer under our DDP, torch's DDP and FSDP2, gathered checkpoints, and the command line
under ``torchrun`` (two processes on one machine, and two torchrun agents on the loopback
address standing in for two machines). All on gloo, ports chosen at run time."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llmbook import data
from llmbook.model import GPTConfig
from llmbook.parallel.dist import free_port, spawn
from llmbook.parallel.experiments import trainer_runs, trainer_worker
from llmbook.profiles import PROFILES
from llmbook.train import TrainConfig, load_checkpoint
from llmbook.train.__main__ import main as train_main
from llmbook.train.distributed import data_parallel_wrap, launch_from_env

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
MODEL = GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, d_model=32,
                  dropout=0.0, bias=False)
# lr small: Adam's steps of rounding noise stay far below the 1e-6 compared (see
# llmbook.parallel.experiments); accumulation exercises no_sync.
SETTINGS = dataclasses.replace(
    PROFILES["cpu"].train, steps=4, batch_size=2, grad_accum=2, lr=1e-4, min_lr=1e-5,
    warmup_steps=0, eval_interval=100, log_interval=1, keep_best=False)


def config(batch_size: int) -> TrainConfig:
    settings = dataclasses.replace(SETTINGS, batch_size=batch_size)
    return TrainConfig(MODEL, settings, seed=3, data="synthetic")


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> str:
    ids = np.random.default_rng(0).integers(0, 256, 4096).astype(np.uint8)
    path = tmp_path_factory.mktemp("tokens") / "train.bin"
    data.write_token_file(path, ids, vocab_size=256, tokenizer="bytes")
    return str(path)


def close(a: dict, b: dict, atol: float = 1e-6) -> float:
    assert a.keys() == b.keys()
    gap = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert gap <= atol, gap
    return gap


# -- torchrun's environment ------------------------------------------------------------------

def test_one_process_needs_no_group():
    launch = launch_from_env("cpu", {})
    assert (launch.rank, launch.world_size, launch.backend) == (0, 1, None)


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2"}, "rendezvous"),
    ({"WORLD_SIZE": "0"}, "positive"),
    ({"WORLD_SIZE": "two"}, "integer"),
    ({"WORLD_SIZE": "2", "RANK": "5", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
      "MASTER_PORT": "1"}, "outside"),
])
def test_bad_environments_are_one_line_errors(env, message):
    with pytest.raises(ValueError, match=message) as info:
        launch_from_env("cpu", env)
    assert "\n" not in str(info.value)


def test_unknown_parallelism_is_an_error():
    with pytest.raises(ValueError, match="choose one of"):
        data_parallel_wrap("zero3", launch_from_env("cpu", {}))


def test_command_line_multi_process_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="--out"):
        train_main(["--profile", "cpu"])
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        train_main(["--profile", "cpu", "--out", "unused"])


# -- the Trainer on two processes ----------------------------------------------------------------

def test_trainer_on_two_processes_equals_one_process(token_file, tmp_path):
    """Two ranks with micro-batches of 2 (and 2 accumulation steps, under no_sync) train
    the model one process trains on micro-batches of 4, under our DDP, torch's and FSDP2.
    Checkpoints are gathered, so they resume under any number of processes: one written
    by FSDP at step 2 resumes under FSDP and in one process, and one written by one
    process at step 2 resumes on two under our DDP, each to the same end."""
    single = trainer_worker(0, 1, "ddp", config(4), token_file, None, None)
    ckpt, ckpt_single = str(tmp_path / "checkpoint.pt"), str(tmp_path / "single.pt")
    trainer_worker(0, 1, "ddp", config(4), token_file, ckpt_single, 2)
    kinds = ("ddp", "torch-ddp", "fsdp")
    runs = [(kind, config(2), token_file, None, None) for kind in kinds]
    runs += [("fsdp", config(2), token_file, ckpt, 2), ("fsdp", config(2), token_file, ckpt,
                                                          None),
             ("ddp", config(2), token_file, ckpt_single, None)]
    ranks = spawn(trainer_runs, 2, runs, timeout=300)
    for rank in ranks:
        for kind, run in zip(kinds, rank):
            close(run["params"], single["params"])
            losses = [r["loss"] for r in run["log"]]
            assert np.allclose(losses, [r["loss"] for r in single["log"]], atol=1e-6), kind
    fsdp, resumed = ranks[0][2], ranks[0][4]
    close(resumed["params"], fsdp["params"], atol=0.0)
    assert resumed["log"] == fsdp["log"]
    one_to_two = ranks[0][5]
    two_to_one = trainer_worker(0, 1, "ddp", config(4), token_file, ckpt, None)
    assert load_checkpoint(ckpt)["step"] == load_checkpoint(ckpt_single)["step"] == 2
    for run in (one_to_two, two_to_one):
        close(run["params"], single["params"])
        assert np.allclose([r["loss"] for r in run["log"]],
                           [r["loss"] for r in single["log"]], atol=1e-6)


# -- the command line under torchrun -----------------------------------------------------------

CLI = ["-m", "llmbook.train", "--profile", "cpu", "--tokenizer", "bytes", "--no-progress",
       "--model", "n_layer=1", "d_model=32", "n_head=2", "block_size=16", "--set",
       "steps=4", "lr=1e-4", "min_lr=1e-5", "warmup_steps=0", "eval_interval=4",
       "eval_tokens=256", "log_interval=1"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def weights(folder: Path) -> dict:
    return torch.load(folder / "model.pt", weights_only=True)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    subprocess.run([sys.executable, *CLI, "batch_size=4", "--out", str(out)], env=ENV,
                   check=True, capture_output=True)
    return out


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_processes_equal_one_process(one_process, tmp_path, parallel):
    out = tmp_path / "run"
    result = subprocess.run(
        [*TORCHRUN, "--standalone", "--nproc_per_node=2", *CLI, "batch_size=2",
         "--parallel", parallel, "--out", str(out)],
        env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('"world_size": 2') == 1  # only rank 0 reports
    close(weights(out), weights(one_process))
    assert len((out / "log.jsonl").read_text().splitlines()) == 5  # 4 train + 1 eval


def test_two_torchrun_agents_on_loopback_act_as_two_machines(one_process, tmp_path):
    port, out = free_port(), tmp_path / "run"
    command = [*TORCHRUN, "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test", *CLI,
               "batch_size=2", "--parallel", "torch-ddp", "--out", str(out)]
    agents = [subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [agent.communicate(timeout=300) for agent in agents]
    for agent, (_, err) in zip(agents, outputs):
        assert agent.returncode == 0, err[-3000:]
    assert sum(stdout.count('"world_size": 2') for stdout, _ in outputs) == 1
    close(weights(out), weights(one_process))


def test_bad_world_size_under_torchrun_is_one_line(tmp_path):
    env = dict(ENV, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")  # no MASTER_ADDR/PORT
    result = subprocess.run([sys.executable, *CLI, "--out", str(tmp_path)], env=env,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "rendezvous" in result.stderr


def test_scale_settings_are_validated():
    from llmbook.profiles import ScaleSettings

    good = dict(seq_lens=(32, 64), batch_size=2, precision_steps=3, dp_steps=2,
                allreduce_sizes=(64, 1024), allreduce_repeats=2, repeats=1, mfu_steps=2)
    ScaleSettings(**good)
    for bad in ({"seq_lens": (64, 32)}, {"batch_size": 0}, {"allreduce_sizes": (64,)},
                {"allreduce_repeats": 0}):
        with pytest.raises(ValueError):
            ScaleSettings(**(good | bad))
