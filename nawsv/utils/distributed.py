"""torch.distributed helpers that also work in a single process (rank 0 of 1), incl. all-gather with gradient."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group (torchrun / spawn), False in a plain process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 writes files, logs and progress bars."""
    return rank() == 0


def gather_sizes(count: int, device: torch.device) -> list[int]:
    """Every rank's ``count`` (e.g. local batch size), in rank order (one read of the device for all of them)."""
    if not is_distributed():
        return [count]
    local = torch.tensor([count], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(size) for size in torch.cat(sizes).tolist()]


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's rows; backward sums the row gradients over ranks and keeps the local slice.

    Uses all_reduce in backward (supported by every backend, gloo included) rather than reduce_scatter.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes = sizes
        ctx.rank = rank()
        longest = max(sizes)
        padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded.contiguous())
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes, strict=True)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start: start + ctx.sizes[ctx.rank]], None


def all_gather_with_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> tuple[torch.Tensor, int]:
    """Rows of all ranks concatenated in rank order (ranks may hold different row counts), and this rank's offset.

    Gradients flow back to every rank's own rows: the gradient of a row is the sum of what all ranks' losses
    send to it. ``sizes`` (from :func:`gather_sizes`) saves a collective when the caller already has them.
    Without a process group this is the identity with offset 0.
    """
    if not is_distributed() or world_size() == 1:
        return tensor, 0
    if sizes is None:
        sizes = gather_sizes(tensor.shape[0], tensor.device)
    return _AllGatherWithGrad.apply(tensor, sizes), sum(sizes[: rank()])
