"""Phase-1 embedding head shared by student and teacher (spec 2.6), and the layer weighting it shares with ECAPA."""
from __future__ import annotations

import torch
from torch import nn


class LayerWeightedSum(nn.Module):
    """H = sum_l w_l h_l with raw learnable weights (init U[0,1), not softmax-normalised, as the original)."""

    def __init__(self, num_hidden_states: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.rand(num_hidden_states))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[B, L+1, T, H] -> [B, T, H] in fp32 whatever the autocast: the sum feeds ECAPA's InstanceNorm and the
        warm-up head's mean/std, and a bf16 sum rounds a channel whose mean is large against its spread (~100x
        in WavLM's post-LN states) to a few levels, most of a standard deviation apart."""
        if hidden_states.dim() != 4 or hidden_states.shape[1] != self.weights.numel():
            raise ValueError(f"expected hidden states [batch, {self.weights.numel()}, frames, channels], "
                             f"got {tuple(hidden_states.shape)}")
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            states = hidden_states if hidden_states.dtype == torch.float64 else hidden_states.float()
            return torch.einsum("l,blth->bth", self.weights.to(states.dtype), states)


class WarmupHead(nn.Module):
    """Weighted layer sum -> mean + std over time -> Linear -> BatchNorm1d: 192-d embedding for E-APN."""

    def __init__(self, num_hidden_states: int, hidden_size: int, embed_dim: int = 192) -> None:
        super().__init__()
        self.layer_sum = LayerWeightedSum(num_hidden_states)
        self.linear = nn.Linear(2 * hidden_size, embed_dim)
        self.norm = nn.BatchNorm1d(embed_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[B, L+1, T, H] -> [B, embed_dim]; std is unbiased with no epsilon, as the original."""
        summed = self.layer_sum(hidden_states)
        stats = torch.cat([summed.mean(dim=1), summed.std(dim=1)], dim=1)
        return self.norm(self.linear(stats))
