"""The parallelism planner: memory per GPU and step time of dp x tp x pp plans with
ZeRO, checked on cases worked by hand (llmbook.planner, Chapter 6)."""

import pytest

from llmbook.comm import allreduce_seconds
from llmbook.memory import n_parameters
from llmbook.costs import flops_per_token
from llmbook.model import GPTConfig
from llmbook.planner import (Cluster, Plan, Workload, candidate_plans, pipeline_bubble,
                             plan_memory, plan_step_seconds, rank_plans)

LLAMA = GPTConfig.preset("llama2-7b")
N = n_parameters(LLAMA)


def _states(memory):
    return memory["weights"] + memory["grads"] + memory["optimizer"]


def test_7b_fp32_adam_does_not_fit_one_80gb_gpu():
    cluster = Cluster(n_gpus=1)
    work = Workload(batch_size=1, seq_len=512, precision="fp32")
    memory = plan_memory(LLAMA, cluster, work, Plan(dp=1))
    assert _states(memory) == 16 * N > 80e9  # 108 GB before a single activation
    (only,) = rank_plans(LLAMA, cluster, work)
    assert not only["fits"]


def test_zero_stages_divide_what_they_shard():
    cluster, work = Cluster(n_gpus=8), Workload(batch_size=8, seq_len=512)
    mem = [plan_memory(LLAMA, cluster, work, Plan(dp=8, zero=z)) for z in range(4)]
    assert _states(mem[0]) == 16 * N  # bf16 weights 2 + grads 2 + master, m, v 12
    assert (mem[1]["weights"], mem[1]["grads"]) == (2 * N, 2 * N)
    assert mem[1]["optimizer"] == pytest.approx(12 * N / 8)
    assert mem[2]["grads"] == pytest.approx(2 * N / 8) and mem[2]["weights"] == 2 * N
    assert _states(mem[3]) == pytest.approx(16 * N / 8)  # ZeRO-3 / FSDP: everything / 8
    assert all(m["activations"] == mem[0]["activations"] for m in mem)


def test_tensor_and_pipeline_parallelism_split_the_parameters():
    cluster, work = Cluster(n_gpus=8), Workload(batch_size=8, seq_len=512)
    base = _states(plan_memory(LLAMA, cluster, work, Plan(dp=8)))
    assert _states(plan_memory(LLAMA, cluster, work, Plan(dp=4, tp=2))) == base / 2
    quarter = plan_memory(LLAMA, cluster, work, Plan(dp=2, tp=2, pp=2))
    assert _states(quarter) == base / 4


def test_pipeline_bubble_by_hand():
    assert pipeline_bubble(4, 12) == 3 / 15
    assert pipeline_bubble(1, 5) == 0.0
    with pytest.raises(ValueError, match="positive"):
        pipeline_bubble(0, 4)


def test_step_time_by_hand():
    cluster = Cluster(n_gpus=8)
    work = Workload(batch_size=64, seq_len=1024)
    t = plan_step_seconds(LLAMA, cluster, work, Plan(dp=8))
    flops = flops_per_token(LLAMA, 1024) * 64 * 1024
    assert t["compute"] == pytest.approx(flops / (8 * 989e12 * 0.4))
    assert t["dp_comm"] == pytest.approx(allreduce_seconds(2 * N, 8, 450e9, 5e-6))
    assert t["tp_comm"] == 0 and t["pp_comm"] == 0
    # a pipeline of 2 stages with m = 64 / (4 x 1) = 16 micro-batches idles 1/17 of the
    # time
    piped = plan_step_seconds(LLAMA, cluster, work, Plan(dp=4, pp=2))
    assert piped["compute"] == pytest.approx(t["compute"] * 17 / 16)
    zero3 = plan_step_seconds(LLAMA, cluster, work, Plan(dp=8, zero=3))
    assert zero3["dp_comm"] == pytest.approx(1.5 * t["dp_comm"])


def test_ranking_puts_fitting_plans_first_and_fastest_first():
    cluster = Cluster(n_gpus=8)
    rows = rank_plans(GPTConfig.preset("gpt2"), cluster, Workload(batch_size=64,
                                                                 seq_len=1024))
    fits = [r["fits"] for r in rows]
    assert fits == sorted(fits, reverse=True)
    times = [r["step_s"] for r in rows if r["fits"]]
    assert times == sorted(times)
    # a 124M model on 8 NVLinked GPUs: plain data parallelism wins (no bubble, no TP
    # traffic, and its gradients are only 250 MB)
    assert (rows[0]["tp"], rows[0]["pp"]) == (1, 1)
    # and a 7B model, which one GPU cannot hold, fits 8 with checkpointing
    work = Workload(batch_size=8, seq_len=2048, checkpointing="block")
    assert rank_plans(LLAMA, Cluster(n_gpus=8), work)[0]["fits"]


def test_candidates_respect_divisibility():
    plans = candidate_plans(GPTConfig.preset("gpt2"), Cluster(n_gpus=8), Workload())
    for p in plans:
        assert p.dp * p.tp * p.pp == 8 and 12 % p.tp == 0 and 12 % p.pp == 0
        assert p.dp > 1 or p.zero == 0


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="whole nodes"):
        Cluster(n_gpus=12, gpus_per_node=8)
    with pytest.raises(ValueError, match="mfu"):
        Cluster(mfu=1.5)
    with pytest.raises(ValueError, match="checkpointing"):
        Workload(checkpointing="some")
    with pytest.raises(ValueError, match="zero"):
        Plan(dp=2, zero=4)
    with pytest.raises(ValueError, match="multiple"):
        Plan(dp=3).micro_batches(Workload(batch_size=8))
