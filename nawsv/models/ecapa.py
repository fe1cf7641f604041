"""Phase-2 back-end: the "small" ECAPA-TDNN on a weighted sum of the SSL hidden states (spec 2.7, ~8.74 M params).

Layout of the ECAPA reference implementation: Conv1d k5 -> three Res2Net-SE blocks (dilations 2/3/4,
scale 8, SE bottleneck 128) with dense-sum inputs -> 1x1 conv to 1536 -> attentive statistics pooling with
global context -> BN -> Linear -> BN.
"""
from __future__ import annotations

import torch
from torch import nn

from nawsv.models.heads import LayerWeightedSum

VAR_FLOOR = 1e-4


class _ConvReluBn(nn.Sequential):
    """Conv1d -> ReLU -> BatchNorm1d, the order used throughout the reference ECAPA."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv1d(in_channels, out_channels, kernel, dilation=dilation, padding=(kernel // 2) * dilation),
            nn.ReLU(),
            nn.BatchNorm1d(out_channels),
        )


class SqueezeExcitation(nn.Module):
    """Channel gates from the time average (C -> bottleneck -> C, ReLU, sigmoid)."""

    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool1d(1),
            nn.Conv1d(channels, bottleneck, 1),
            nn.ReLU(),
            nn.Conv1d(bottleneck, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class Res2NetSEBlock(nn.Module):
    """1x1 conv, hierarchical dilated 3-tap convs over `scale` channel groups, 1x1 conv, SE, residual."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int = 8, se_bottleneck: int = 128) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels ({channels}) must be divisible by scale ({scale})")
        width = channels // scale
        self.scale = scale
        self.expand = _ConvReluBn(channels, channels)
        self.group_convs = nn.ModuleList(_ConvReluBn(width, width, kernel, dilation) for _ in range(scale - 1))
        self.project = _ConvReluBn(channels, channels)
        self.se = SqueezeExcitation(channels, se_bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.chunk(self.expand(x), self.scale, dim=1)
        outputs = []
        running = None
        for group, conv in zip(groups[:-1], self.group_convs, strict=True):   # the last group passes through
            running = conv(group if running is None else running + group)
            outputs.append(running)
        outputs.append(groups[-1])
        return x + self.se(self.project(torch.cat(outputs, dim=1)))


class AttentiveStatsPooling(nn.Module):
    """Attention over frames conditioned on the utterance mean/std; weighted mean and std (var floor 1e-4)."""

    def __init__(self, channels: int, attention_dim: int = 256) -> None:
        super().__init__()
        self.attention = nn.Sequential(
            nn.Conv1d(3 * channels, attention_dim, 1),
            nn.ReLU(),
            nn.BatchNorm1d(attention_dim),
            nn.Tanh(),
            nn.Conv1d(attention_dim, channels, 1),
            nn.Softmax(dim=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Statistics in fp32 whatever the autocast, and the weighted variance as sum w (x - mu)^2: the same
        value as E_w[x^2] - mu^2 (the weights sum to 1) without its cancellation when a channel's mean is large
        against its spread (in bf16 that form loses everything once mu/sigma exceeds ~20)."""
        frames = x.shape[-1]
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x if x.dtype == torch.float64 else x.float()
            mean = x.mean(dim=2, keepdim=True)
            std = x.var(dim=2, keepdim=True).clamp(min=VAR_FLOOR).sqrt()
            context = torch.cat([x, mean.expand(-1, -1, frames), std.expand(-1, -1, frames)], dim=1)
        scores = self.attention[:-1](context)        # the attention network itself may run in bf16
        with torch.autocast(device_type=x.device.type, enabled=False):
            weights = self.attention[-1](scores.to(x.dtype))
            mu = (x * weights).sum(dim=2, keepdim=True)
            sigma = ((x - mu).square() * weights).sum(dim=2).clamp(min=VAR_FLOOR).sqrt()
            return torch.cat([mu.squeeze(2), sigma], dim=1)


class EcapaTdnn(nn.Module):
    """Hidden states [B, L+1, T, input_dim] -> speaker embedding [B, embed_dim]; any T >= 2 frames."""

    def __init__(self, num_hidden_states: int, input_dim: int, channels: int = 512, embed_dim: int = 192) -> None:
        """The multi-layer aggregation keeps 3 * channels (1536 at the paper's C=512), so small test and CPU
        configurations shrink the whole network, not only the Res2Net blocks."""
        super().__init__()
        aggregate = 3 * channels
        self.layer_sum = LayerWeightedSum(num_hidden_states)
        self.input_norm = nn.InstanceNorm1d(input_dim)
        self.stem = _ConvReluBn(input_dim, channels, kernel=5)
        self.blocks = nn.ModuleList(Res2NetSEBlock(channels, 3, dilation) for dilation in (2, 3, 4))
        self.aggregate = nn.Sequential(nn.Conv1d(aggregate, aggregate, 1), nn.ReLU())
        self.pooling = AttentiveStatsPooling(aggregate)
        self.pool_norm = nn.BatchNorm1d(2 * aggregate)
        self.embedding = nn.Linear(2 * aggregate, embed_dim)
        self.embedding_norm = nn.BatchNorm1d(embed_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(self.layer_sum(hidden_states).transpose(1, 2))
        x = self.stem(x)
        block_outputs = []
        block_input = x
        for block in self.blocks:
            block_outputs.append(block(block_input))
            block_input = block_input + block_outputs[-1]
        x = self.aggregate(torch.cat(block_outputs, dim=1))
        return self.embedding_norm(self.embedding(self.pool_norm(self.pooling(x))))
