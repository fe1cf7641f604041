"""Extended angular prototypical loss (E-APN, spec 2.8) with the global batch as negatives.

Rows: the query of each speaker against every speaker's anchor, for each of the anchor sets (student clean u1,
teacher u1, teacher u2); logits w * cos + b, target = the same speaker; cross-entropy over all stacked rows.

Multi-process convention (``gather=True`` under torch.distributed): the anchors of all ranks are all-gathered
with gradient, so every rank scores its own queries against the global batch, and the target of local query i
is (offset of this rank) + i. The queries themselves need no gathering: each row belongs to exactly one rank.
Each rank returns ``world_size * (sum of its rows' CE) / (number of rows globally)``. Hence
(a) the mean of the returned values over ranks equals the single-process loss on the concatenated batch, and
(b) after DDP's gradient averaging (the module's w, b must be inside the DDP-wrapped model, or their gradients
all-reduced/averaged like DDP does) every parameter gets exactly the single-process gradient.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nawsv.utils.distributed import all_gather_with_grad, gather_sizes, is_distributed, world_size

MIN_SCALE = 1e-6


class EAPNLoss(nn.Module):
    """Scaled-cosine cross-entropy of queries against several same-speaker anchor sets; learnable w, b."""

    def __init__(self, init_w: float = 10.0, init_b: float = -5.0, gather: bool = True) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))
        self.gather = gather
        self.last_num_candidates = 0          # anchors each query was scored against in the last call (logged)

    def forward(self, query: torch.Tensor, anchors: Sequence[torch.Tensor]) -> torch.Tensor:
        """query [B, D] (noisy student u2), anchors: [B, D] tensors (row j = speaker j) -> scalar loss."""
        if not anchors:
            raise ValueError("E-APN needs at least one anchor set")
        for anchor in anchors:
            if anchor.shape != query.shape:
                raise ValueError(f"anchor shape {tuple(anchor.shape)} differs from query shape {tuple(query.shape)}")
        distributed = self.gather and is_distributed() and world_size() > 1
        with torch.autocast(device_type=query.device.type, enabled=False):
            queries = F.normalize(query.float(), dim=1)
            sizes = gather_sizes(queries.shape[0], query.device) if distributed else [queries.shape[0]]
            offset = 0
            gathered = []
            for anchor in anchors:
                anchor = F.normalize(anchor.float(), dim=1)
                if distributed:
                    anchor, offset = all_gather_with_grad(anchor, sizes)
                gathered.append(anchor)
            scale = self.w.float().clamp(min=MIN_SCALE)
            logits = torch.cat([scale * queries @ anchor.t() + self.b.float() for anchor in gathered], dim=0)
            self.last_num_candidates = int(gathered[0].shape[0])
            local = torch.arange(queries.shape[0], device=query.device) + offset
            targets = local.repeat(len(gathered))
            total = F.cross_entropy(logits, targets, reduction="sum")
            global_rows = sum(sizes) * len(gathered)
            return total * (world_size() if distributed else 1) / global_rows
