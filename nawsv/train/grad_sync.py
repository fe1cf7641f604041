"""Gradient averaging over ranks that overlaps the backward pass, as PyTorch DDP's reducer does.

Gradients are gathered into buckets (1 MiB first, then 25 MiB); a bucket's all-reduce starts as soon as the last
of its gradients has been computed, while backward goes on through earlier layers, so only the last bucket's
communication is exposed. Buckets are launched in the same order on every rank (collectives must match).

Why not ``DistributedDataParallel``: the trainable set changes between epochs (adapters, then the whole student;
the SSL model frozen, then trained), the warm-up head runs twice per step and LayerDrop skips layers, which would
need re-wrapping the modules each phase plus ``find_unused_parameters``. Here:

- buckets follow the trainable set (rebuilt when it changes, the same on every rank since it follows the config),
  first in reverse registration order, then, after one step, in the order the gradients really arrived on rank 0;
- before backward, the loss's autograd graph tells which parameters will get a gradient on this rank: a bucket
  does not wait for the others (a dropped layer, an unused mask embedding), its slots stay zero;
- every bucket carries a "used here" flag per parameter, and the first one the number of ranks whose loss is not
  finite: a parameter no rank used keeps ``grad = None`` (Adam leaves it and its moments alone, as in one process)
  and a non-finite loss anywhere is known everywhere, without a collective of its own;
- the averaged gradients are the same on every rank, so the norm, the skip decision and clipping need no further
  communication, and the step reads the device once (norm, loss flag, loss value, usage flags together).

Collectives that run inside backward (SyncBatchNorm, E-APN's all-gather) interleave with the buckets in one order
on every rank as long as the ranks' graphs have the same shape, the condition DDP has too; nawsv's tasks use the
same parameters on every rank (masks always mask something, LayerDrop is shared).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nawsv.train.distributed import broadcast_object

FIRST_BUCKET_BYTES = 1 << 20            # small, so the first all-reduce starts early (DDP's choice)
BUCKET_BYTES = 25 << 20


@dataclasses.dataclass(frozen=True)
class StepGradients:
    """What one backward produced, read from the device at once."""

    norm: float                  # L2 norm of the averaged gradients (inf/NaN when any holds one)
    losses_finite: bool          # the loss was finite on every rank
    loss: float                  # this rank's loss


@dataclasses.dataclass
class _Bucket:
    params: list[nn.Parameter]
    offsets: list[int]
    numel: int                   # gradient elements; one flag per parameter and one loss slot follow
    buffer: torch.Tensor | None = None
    pending: int = 0
    work: Any = None

    @classmethod
    def of(cls, params: list[nn.Parameter]) -> "_Bucket":
        offsets = [0]
        for param in params:
            offsets.append(offsets[-1] + param.numel())
        return cls(params, offsets[:-1], offsets[-1])

    def flags(self) -> torch.Tensor:
        return self.buffer[self.numel:]


class GradientSync:
    """``backward(loss)`` leaves in ``.grad`` the gradients averaged over ranks (None where no rank used them)."""

    def __init__(self, parameters: list[nn.Parameter], world_size: int,
                 bucket_bytes: tuple[int, int] = (FIRST_BUCKET_BYTES, BUCKET_BYTES)) -> None:
        self.bucket_bytes = bucket_bytes         # (first bucket, the others)
        self.parameters = list(dict.fromkeys(parameters))
        self._position = {id(p): i for i, p in enumerate(self.parameters)}
        self.world_size = world_size
        self.wait_seconds = 0.0                  # host time blocked on communication in the last step
        self.early_buckets = 0                   # all-reduces of the last step started while gradients were due
        self._outstanding = 0                    # gradients of this rank still to come in this backward
        self._trainable: tuple[int, ...] = ()
        self._buckets: list[_Bucket] = []
        self._where: dict[int, tuple[int, int]] = {}
        self._expected: set[int] = set()
        self._next = 0
        self._active = False
        self._arrivals: list[int] | None = None  # recorded on the first step after a rebuild
        if world_size > 1:
            for param in self.parameters:
                param.register_post_accumulate_grad_hook(self._arrived)

    @property
    def num_buckets(self) -> int:
        return len(self._buckets)

    def backward(self, loss: torch.Tensor) -> StepGradients:
        """Back-propagate the scalar ``loss`` and average; every rank gets the same norm and loss verdict."""
        loss = loss.float()
        nonfinite = (~torch.isfinite(loss.detach())).float().reshape(1)
        if self.world_size == 1:
            loss.backward()
            grads = [p.grad for p in self.parameters if p.grad is not None]
            values = torch.cat([_norm(grads, loss.device), nonfinite, loss.detach().reshape(1)]).tolist()
            return StepGradients(values[0], values[1] == 0, values[2])
        self._prepare(loss, nonfinite)
        self._active = True
        try:
            loss.backward()
        finally:
            self._active = False
        self._launch(final=True)
        return self._finish(loss)

    def _prepare(self, loss: torch.Tensor, nonfinite: torch.Tensor) -> None:
        trainable = [p for p in self.parameters if p.requires_grad]
        if tuple(map(id, trainable)) != self._trainable:
            self._build(trainable[::-1])
            self._trainable = tuple(map(id, trainable))
            self._arrivals = []
        self._expected = _leaves_reached(loss) & set(self._where)
        for index, bucket in enumerate(self._buckets):
            like = bucket.params[0] if bucket.params else loss
            bucket.buffer = torch.zeros(bucket.numel + len(bucket.params) + 1, dtype=like.dtype, device=like.device)
            bucket.pending = sum(id(p) in self._expected for p in bucket.params)
            bucket.work = None
            if index == 0:
                bucket.buffer[-1:].copy_(nonfinite)
        self._next = 0
        self._outstanding = len(self._expected)
        self.early_buckets = 0
        self._launch(final=False)                # buckets no gradient of this rank goes to

    def _build(self, ordered: list[nn.Parameter]) -> None:
        """Consecutive parameters of one dtype and device, up to the bucket size."""
        self._buckets, current, size = [], [], 0
        for param in ordered:
            nbytes = param.numel() * param.element_size()
            limit = self.bucket_bytes[1] if self._buckets else self.bucket_bytes[0]
            if current and (size + nbytes > limit or (param.dtype, param.device) != (current[0].dtype,
                                                                                      current[0].device)):
                self._buckets.append(_Bucket.of(current))
                current, size = [], 0
            current.append(param)
            size += nbytes
        if current or not self._buckets:         # nothing trainable: one empty bucket still carries the loss flag
            self._buckets.append(_Bucket.of(current))
        self._where = {id(p): (b, i) for b, bucket in enumerate(self._buckets) for i, p in enumerate(bucket.params)}

    def _arrived(self, param: nn.Parameter) -> None:
        """Autograd hook: this parameter's gradient is complete; move it into its bucket."""
        if not self._active or id(param) not in self._where:
            return
        index, position = self._where[id(param)]
        bucket = self._buckets[index]
        offset = bucket.offsets[position]
        bucket.buffer[offset:offset + param.numel()].copy_(param.grad.reshape(-1))
        bucket.flags()[position] = 1.0
        param.grad = None                        # the bucket holds it now (one copy in memory, not two)
        if self._arrivals is not None:
            self._arrivals.append(self._position[id(param)])
        if id(param) in self._expected:
            self._outstanding -= 1
            bucket.pending -= 1
            if bucket.pending == 0:
                self._launch(final=False)

    def _launch(self, final: bool) -> None:
        """Start the all-reduce of every complete bucket in order (all of them when ``final``)."""
        while self._next < len(self._buckets) and (final or self._buckets[self._next].pending <= 0):
            bucket = self._buckets[self._next]
            bucket.work = dist.all_reduce(bucket.buffer, async_op=True)
            self._next += 1
            self.early_buckets += self._outstanding > 0

    def _finish(self, loss: torch.Tensor) -> StepGradients:
        start = time.perf_counter()
        for bucket in self._buckets:
            bucket.work.wait()
        self.wait_seconds = time.perf_counter() - start
        grads = [bucket.buffer[:bucket.numel].div_(self.world_size) for bucket in self._buckets]
        flags = torch.cat([bucket.flags() for bucket in self._buckets])
        norm, local_loss, *counts = torch.cat([_norm(grads, loss.device), loss.detach().reshape(1), flags]).tolist()
        nonfinite_losses = counts[len(self._buckets[0].params)]
        for bucket in self._buckets:
            used, counts = counts[:len(bucket.params)], counts[len(bucket.params) + 1:]
            for param, offset, ranks in zip(bucket.params, bucket.offsets, used, strict=True):
                if ranks > 0:
                    param.grad = bucket.buffer[offset:offset + param.numel()].view_as(param)
        self._reorder()
        return StepGradients(norm, nonfinite_losses == 0, local_loss)

    def _reorder(self) -> None:
        """After the first step of a trainable set: buckets in rank 0's arrival order (the same on every rank)."""
        if self._arrivals is None:
            return
        arrivals = broadcast_object(self._arrivals)
        self._arrivals = None
        trainable = [p for bucket in self._buckets for p in bucket.params]
        first = [self.parameters[i] for i in arrivals if id(self.parameters[i]) in self._where]
        arrived = set(map(id, first))
        self._build(first + [p for p in trainable if id(p) not in arrived])


def _norm(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Global L2 norm in fp32, as a 1-element tensor on ``device`` (inf/NaN when any gradient holds one)."""
    if not grads:
        return torch.zeros(1, device=device)
    norms = torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])
    return torch.linalg.vector_norm(norms).reshape(1)


def _leaves_reached(loss: torch.Tensor) -> set[int]:
    """ids of the leaf tensors (parameters) whose gradient ``loss.backward()`` will compute."""
    leaves: set[int] = set()
    seen: set[Any] = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)          # AccumulateGrad nodes hold their leaf
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(child for child, _ in node.next_functions)
    return leaves
