"""AAM-softmax with the inter-top-k penalty and inverse-frequency class weights (spec 2.8, phase 2).

Logits (all times ``scale``): target class cos(theta_y + m); the ``topk`` non-target classes with the largest
cosine get cos(theta_c - m') (harder negatives); every other class keeps cos(theta_c). The target is excluded
from the top-k by masking it out, so it is never picked, whatever the sign of its cosine (the original's
"multiply by -2" trick could pick it when its cosine is negative).

Large angles: cos(theta + m) stops decreasing once theta + m > pi, so a target beyond pi - m would be
pushed away. With ``fix_large_angle`` (default) the target logit there is cos(theta) - m * sin(m), the
ArcFace / WeSpeaker fallback, which stays decreasing in theta; ``fix_large_angle=False`` reproduces the
original (no correction). The case needs cos(theta_y) < -cos(m) (-0.98 at m = 0.2), so it only occurs in
the first steps of training.

Class weights across ranks: the weighted CE is sum_i w_i l_i / sum_i w_i over the *global* batch. With
``weight_norm="global"`` (default) each rank divides its local sum by the all-reduced global sum of weights and
scales by the world size, so after the trainer averages gradients over ranks the update equals one process on the
concatenated batch, whatever the GPU count. ``"per_rank"`` divides by the local sum, as the released DDP code did:
with few crops per GPU the class weights then largely cancel.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nawsv.utils.distributed import is_distributed, world_size

WEIGHT_NORMS = ("global", "per_rank")


def inverse_frequency_weights(class_counts: Sequence[int]) -> torch.Tensor:
    """c_k = N_total / N_k (unnormalised, as the original); every class needs at least one example."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if counts.numel() == 0 or bool((counts <= 0).any()):
        raise ValueError("every class needs a positive utterance count to get an inverse-frequency weight")
    return (counts.sum() / counts).float()


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax + inter-top-k penalty; ``set_margin`` changes m (large-margin stage)."""

    def __init__(self, embed_dim: int, num_classes: int, margin: float = 0.2, scale: float = 30.0, topk: int = 5,
                 topk_margin: float = 0.1, class_weights: torch.Tensor | Sequence[float] | None = None,
                 fix_large_angle: bool = True, weight_norm: Literal["global", "per_rank"] = "global") -> None:
        super().__init__()
        if weight_norm not in WEIGHT_NORMS:
            raise ValueError(f"weight_norm must be one of {list(WEIGHT_NORMS)}, got {weight_norm!r}")
        self.weight_norm = weight_norm
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if topk < 0:
            raise ValueError(f"topk must be >= 0, got {topk}")
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_normal_(self.weight)
        self.scale = scale
        self.topk = min(topk, num_classes - 1)
        self.topk_margin = topk_margin
        self.fix_large_angle = fix_large_angle
        self.margin = margin
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if class_weights.shape != (num_classes,):
                raise ValueError(f"class_weights must have {num_classes} entries, got {tuple(class_weights.shape)}")
        self.register_buffer("class_weights", class_weights)

    def set_margin(self, margin: float) -> None:
        """Change the target margin m (e.g. 0.2 -> 0.4 for the large-margin stage); top-k margin unchanged."""
        self.margin = float(margin)

    def get_extra_state(self) -> dict[str, Any]:
        """Keep the current margin in checkpoints, so a resumed large-margin stage keeps m = 0.4."""
        return {"margin": self.margin}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.margin = float(state["margin"])

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos(theta) [B, C] between embeddings and class centres, in fp32."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return F.normalize(embeddings.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the target margin and the top-k penalty applied [B, C]."""
        cosine = self.cosines(embeddings)
        sine = (1.0 - cosine * cosine).clamp(0.0, 1.0).sqrt()
        target = F.one_hot(labels, cosine.shape[1]).bool()
        with_margin = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        if self.fix_large_angle:
            beyond = cosine < math.cos(math.pi - self.margin)
            with_margin = torch.where(beyond, cosine - self.margin * math.sin(self.margin), with_margin)
        logits = torch.where(target, with_margin, cosine)
        if self.topk > 0 and self.topk_margin != 0.0:
            candidates = cosine.detach().masked_fill(target, float("-inf"))
            hardest = candidates.topk(self.topk, dim=1).indices
            penalised = torch.zeros_like(target).scatter_(1, hardest, True)
            closer = cosine * math.cos(self.topk_margin) + sine * math.sin(self.topk_margin)
            logits = torch.where(penalised, closer, logits)
        return logits * self.scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (class-weighted CE normalised as ``weight_norm`` says, top-1 accuracy of the plain cosines)."""
        logits = self.logits(embeddings, labels)
        per_row = F.cross_entropy(logits, labels, reduction="none")
        weights = (self.class_weights[labels] if self.class_weights is not None
                   else torch.ones_like(per_row))
        total = weights.sum()
        ranks = 1
        if self.weight_norm == "global" and is_distributed() and world_size() > 1:
            total = total.detach().clone()
            dist.all_reduce(total)
            ranks = world_size()
        loss = (weights * per_row).sum() * ranks / total
        with torch.no_grad():
            accuracy = (self.cosines(embeddings).argmax(dim=1) == labels).float().mean()
        return loss, accuracy
