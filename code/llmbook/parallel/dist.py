"""Process groups for Chapter 6: a free port, N gloo workers started from Python,
rank-0-only printing.

:func:`spawn` is how the book's notebooks and tests run a function on several processes
without ``torchrun``: it picks a free port, starts ``world_size`` processes that join
one gloo process group, runs ``fn(rank, world_size, *args)`` in each and returns what
every rank returned. A collective that hangs (one rank waiting for a partner that died
or never calls) fails after ``timeout`` seconds instead of hanging the caller.

``fn`` must be importable (a module-level function in a package): the ``spawn`` start
method pickles it by reference.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException


def free_port() -> int:
    """A TCP port nobody is listening on now: the OS picks one when we bind to port 0.

    Another process could take it between now and our use; on one machine that is rare,
    and far better than a fixed port, which makes two runs at once collide every time.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank() -> int:
    """This process's rank, 0 when no process group is running (a single process)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes in the default group, 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only, so that N processes do not print every line N times."""
    if rank() == 0:
        print(*args, **kwargs)


def _write_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(obj, f)
    os.replace(tmp, path)


def _worker(
    local_rank: int,
    fn: Callable,
    world: int,
    port: int,
    timeout: float,
    out_dir: str,
    args: tuple,
) -> None:
    """The body of each spawned process: join the group, run ``fn``, save its result."""
    torch.set_num_threads(
        1
    )  # N processes share the cores; one thread each avoids thrashing
    out = Path(out_dir) / f"rank{local_rank}.pkl"
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=local_rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout),
        )
        try:
            result = fn(local_rank, world, *args)
        finally:
            dist.destroy_process_group()
        _write_atomic(out, ("ok", result))
    except BaseException:  # report any failure to the parent, with its traceback
        _write_atomic(out, ("error", traceback.format_exc()))
        raise


def spawn(
    fn: Callable, world_size: int = 2, *args: Any, timeout: float = 60.0
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo processes; return the
    list of their results, rank 0 first. Results travel back by pickle, so keep them to
    tensors (on the CPU) and plain Python values.

    Raises ``RuntimeError`` with the failing rank's traceback if any rank fails, and
    ``TimeoutError`` (after stopping every process) if they have not all finished within
    ``timeout`` seconds; collectives inside get the same timeout. From a script, call it
    under ``if __name__ == "__main__":``: each new process re-imports the main module.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout}")
    with tempfile.TemporaryDirectory(prefix="llmbook-spawn-") as out_dir:
        context = mp.start_processes(
            _worker,
            args=(fn, world_size, free_port(), timeout, out_dir, args),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=0.05):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{fn.__name__} on {world_size} processes did not finish "
                        f"within {timeout:.0f} s (a collective waiting for a rank that "
                        "never joins?); raise timeout= if the work is just slow"
                    )
        except ProcessException as err:  # a rank raised, or died before fn ran
            detail = _failure(out_dir, world_size) or (
                f"{err}. A process that dies before running fn: from a script, call "
                "spawn under `if __name__ == '__main__':` (spawn re-imports __main__)"
            )
            raise RuntimeError(detail) from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        return [_result(Path(out_dir) / f"rank{r}.pkl") for r in range(world_size)]


def _failure(out_dir: str, world: int) -> str | None:
    for r in range(world):
        path = Path(out_dir) / f"rank{r}.pkl"
        if path.exists():
            status, value = pickle.loads(path.read_bytes())
            if status == "error":
                return f"rank {r} failed:\n{value}"
    return None


def _result(path: Path) -> Any:
    if not path.exists():
        raise RuntimeError(f"a worker exited without a result ({path.name})")
    status, value = pickle.loads(path.read_bytes())
    if status != "ok":
        raise RuntimeError(f"worker failed:\n{value}")
    return value
