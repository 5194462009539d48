"""Tests for llmbook.parallel.dist (Chapter 6): ports, rank-0 printing, and spawn's
failure reports (a rank that raises, a collective that never completes)."""

from __future__ import annotations

import pytest
import torch.distributed as dist
from llmbook.parallel import experiments
from llmbook.parallel.dist import free_port, print0, rank, spawn, world_size

WORLD = 2


def test_free_port_and_single_process_helpers():
    port = free_port()
    assert 1024 <= port < 65536
    assert not dist.is_initialized()
    assert (rank(), world_size()) == (0, 1)
    print0("rank 0 prints without a process group")


def test_spawn_reports_a_failing_rank_and_a_timeout():
    with pytest.raises(RuntimeError, match="rank 1 failed"):
        spawn(experiments.failing_worker, WORLD, "fail", timeout=60)
    with pytest.raises(TimeoutError, match="did not finish"):
        spawn(experiments.failing_worker, WORLD, "hang", timeout=6)


def test_spawn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="world_size"):
        spawn(experiments.failing_worker, 0, "fail")
    with pytest.raises(ValueError, match="timeout"):
        spawn(experiments.failing_worker, 2, "fail", timeout=0)
