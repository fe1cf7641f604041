"""Layer-wise hint (MSE) loss between student and teacher hidden states (spec 2.8, "L_hint")."""
from __future__ import annotations

import torch
from torch import nn


class HintLoss(nn.Module):
    """mean_b [ lambda * sum_{l<L} e_l(b) + e_L(b) ], e_l(b) = MSE over frames x channels; index 0 is not matched.

    Computed in fp32 (also under bf16 autocast), because the per-layer errors are small differences of
    large activations.
    """

    def __init__(self, lambda_: float = 0.1) -> None:
        super().__init__()
        self.lambda_ = lambda_

    def layer_errors(self, student_hs: torch.Tensor, teacher_hs: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-layer mean squared error [B, L] over layers 1..L."""
        if student_hs.shape != teacher_hs.shape or student_hs.dim() != 4:
            raise ValueError(f"student and teacher hidden states must both be [batch, L+1, frames, channels], got "
                             f"{tuple(student_hs.shape)} and {tuple(teacher_hs.shape)}")
        with torch.autocast(device_type=student_hs.device.type, enabled=False):
            diff = student_hs[:, 1:].float() - teacher_hs[:, 1:].float()
            return diff.pow(2).mean(dim=(2, 3))

    def forward(self, student_hs: torch.Tensor, teacher_hs: torch.Tensor) -> torch.Tensor:
        errors = self.layer_errors(student_hs, teacher_hs)
        weights = torch.full((errors.shape[1],), self.lambda_, dtype=errors.dtype, device=errors.device)
        weights[-1] = 1.0
        return (errors * weights).sum(dim=1).mean()
