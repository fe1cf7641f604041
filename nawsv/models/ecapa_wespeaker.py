"""WeSpeaker's ECAPA-TDNN on s3prl's layer sum: the back-end of models imported from WeSpeaker's SSL recipe.

A model trained by WeSpeaker's own WavLM recipe (s3prl front-end, ``cmvn``, ``ECAPA_TDNN_GLOB_c512``) computes
something else than nawsv's back-end (:mod:`nawsv.models.ecapa`) in five places, each reproduced here so that
the imported model embeds exactly as WeSpeaker's: the layer weights are softmax-normalised (stored normalised in
a :class:`~nawsv.models.heads.LayerWeightedSum`), each state may be layer-normed first (s3prl's ``normalize``),
the sum is mean- (and optionally variance-) normalised over time instead of instance-normed, the three Res2Net
blocks are chained instead of densely summed, and the pooling is WeSpeaker's (no BatchNorm in the attention,
``E[x^2] - mu^2`` with floor 1e-7), followed by BN -> Linear [-> BN].
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nawsv.models.ecapa import Res2NetSEBlock, _ConvReluBn
from nawsv.models.heads import LayerWeightedSum

WESPEAKER_EPS = 1e-7          # WeSpeaker's variance floor in cmvn and pooling


class WeSpeakerAttentiveStatsPooling(nn.Module):
    """WeSpeaker's ASTP: tanh attention over frames (with the utterance mean/std as context when global)."""

    def __init__(self, channels: int, bottleneck: int = 128, global_context: bool = True) -> None:
        super().__init__()
        self.global_context = global_context
        self.attention = nn.Sequential(
            nn.Conv1d(3 * channels if global_context else channels, bottleneck, 1),
            nn.Tanh(),
            nn.Conv1d(bottleneck, channels, 1),
            nn.Softmax(dim=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, 2C] (weighted mean and std)."""
        context = x
        if self.global_context:
            mean = x.mean(dim=2, keepdim=True).expand_as(x)
            std = (x.var(dim=2, keepdim=True) + WESPEAKER_EPS).sqrt().expand_as(x)
            context = torch.cat([x, mean, std], dim=1)
        weights = self.attention(context)
        mu = (weights * x).sum(dim=2)
        var = (weights * x.square()).sum(dim=2) - mu.square()
        return torch.cat([mu, var.clamp(min=WESPEAKER_EPS).sqrt()], dim=1)


class WeSpeakerEcapaTdnn(nn.Module):
    """Hidden states [B, L+1, T, input_dim] -> embedding [B, embed_dim], as WeSpeaker's s3prl + ECAPA model."""

    def __init__(self, num_hidden_states: int, input_dim: int, channels: int = 512, embed_dim: int = 192,
                 global_context: bool = True, emb_bn: bool = False, state_norm: bool = False,
                 cmvn_mean: bool = True, cmvn_var: bool = False, aggregate_dim: int = 1536) -> None:
        """``state_norm``: s3prl's ``upstream_args.normalize``; ``cmvn_*``: WeSpeaker's ``cmvn`` / ``cmvn_args``;
        ``global_context`` / ``emb_bn``: the ``GLOB`` models and ``model_args.emb_bn``."""
        super().__init__()
        self.state_norm = state_norm
        self.cmvn_mean = cmvn_mean
        self.cmvn_var = cmvn_var
        self.layer_sum = LayerWeightedSum(num_hidden_states)
        self.stem = _ConvReluBn(input_dim, channels, kernel=5)
        self.blocks = nn.ModuleList(Res2NetSEBlock(channels, 3, dilation) for dilation in (2, 3, 4))
        self.aggregate = nn.Conv1d(3 * channels, aggregate_dim, 1)
        self.pooling = WeSpeakerAttentiveStatsPooling(aggregate_dim, global_context=global_context)
        self.pool_norm = nn.BatchNorm1d(2 * aggregate_dim)
        self.embedding = nn.Linear(2 * aggregate_dim, embed_dim)
        self.embedding_norm = nn.BatchNorm1d(embed_dim) if emb_bn else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.state_norm:
            hidden_states = F.layer_norm(hidden_states, hidden_states.shape[-1:])
        x = self.layer_sum(hidden_states)
        if self.cmvn_mean:
            x = x - x.mean(dim=1, keepdim=True)
        if self.cmvn_var:
            x = x / (x.var(dim=1, keepdim=True) + WESPEAKER_EPS).sqrt()
        x = self.stem(x.transpose(1, 2))
        block_outputs = []
        for block in self.blocks:
            x = block(x)
            block_outputs.append(x)
        x = F.relu(self.aggregate(torch.cat(block_outputs, dim=1)))
        return self.embedding_norm(self.embedding(self.pool_norm(self.pooling(x))))
