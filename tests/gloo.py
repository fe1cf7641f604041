"""Run a test function in N gloo processes on this machine (torch.distributed without a GPU)."""
from __future__ import annotations

import datetime
import socket
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world: int, port: int, timeout: float, worker: Callable[..., None],
           args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))
    try:
        worker(rank, *args)
        dist.barrier()          # no rank tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()


def run_gloo(worker: Callable[..., None], world: int, *args: Any, timeout: float = 1800) -> None:
    """``worker(rank, *args)`` in ``world`` processes joined in one gloo group; a failure in any raises here.

    ``worker`` must be a module-level function (it is pickled into the child processes). ``timeout`` (seconds)
    bounds every collective: a test of "no rank hangs" sets a short one, so a hang fails fast.
    """
    mp.spawn(_entry, args=(world, free_port(), timeout, worker, args), nprocs=world, join=True)
