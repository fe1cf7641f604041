"""Process-group setup for torchrun launches and the small collectives of the trainer's decisions.

Gradients are averaged by :mod:`nawsv.train.grad_sync` (bucketed, overlapped with backward).
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from typing import Any, Callable, Iterable, TypeVar

import torch
import torch.distributed as dist

from nawsv.utils.errors import NawsvError

log = logging.getLogger(__name__)
T = TypeVar("T")


class RankZeroFailed(NawsvError):
    """Raised on the other ranks when work that rank 0 does alone failed there (same one-line message)."""


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group.

    NCCL on CUDA, gloo on CPU. Without torchrun variables this is a single process.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        from nawsv.utils.errors import ConfigError
        raise ConfigError("--device cuda was requested but torch sees no CUDA device; use --device cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        log.info("rank %d/%d joined the %s process group", rank, world_size, backend)
    return DistContext(rank, world_size, local_rank, target)


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True only when ``flag`` is true on every rank (e.g. 'my loss is finite')."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank: decisions that depend on the filesystem are made once, by rank 0."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def on_rank_zero(action: Callable[[], T], what: str, share: bool = False) -> T | None:
    """Run ``action`` on rank 0 alone; an error there ends every rank at once, with rank 0's one-line message.

    Without this the other ranks would wait in their next collective until the 30-minute timeout. Every rank
    must call it at the same point (it holds one collective, which also serves as the barrier after the work).
    Rank 0 re-raises its own exception; the others raise :class:`RankZeroFailed`. ``what`` says what rank 0
    was doing, for errors that are not user errors. With ``share`` every rank returns rank 0's result (which
    must pickle); otherwise the other ranks get None.
    """
    result, problem = None, None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        try:
            result = action()
        except Exception as exc:  # noqa: BLE001 - any failure must reach the other ranks before it ends rank 0
            problem = exc
    message = None
    if problem is not None:
        message = str(problem) if isinstance(problem, NawsvError) else (
            f"rank 0 failed while {what}: {type(problem).__name__}: {problem} (its log has the traceback)")
    message, shared = broadcast_object((message, result if share else None))
    if problem is not None:
        raise problem
    if message is not None:
        raise RankZeroFailed(message)
    return shared if share else result


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (a list of one in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_module_states(modules: Iterable[torch.nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every rank (after a restore, so no rank starts elsewhere)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for module in modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                dist.broadcast(tensor.data, src=0)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
