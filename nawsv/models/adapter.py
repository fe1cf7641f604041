"""Parallel bottleneck adapters on the FFN branch of every WavLM encoder layer (NAW-SV student).

The adapter output is added to the output of each layer's ``feed_forward`` by a forward hook, so HF's layer
code is neither subclassed nor copied: post-LN layers compute ``LN(h + FFN(h) + A(h))``, pre-LN ("stable layer
norm", Large) layers ``h + FFN(LN(h)) + A(LN(h))``, because the hook sees exactly the FFN's own input.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class BottleneckAdapter(nn.Module):
    """A(h) = Up(ELU(Down(h))): hidden -> bottleneck -> hidden, HF Linear init (normal 0.02, zero bias)."""

    def __init__(self, hidden_size: int, bottleneck: int, zero_init_up: bool = False) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_size)
        self.activation = nn.ELU()
        for linear in (self.down, self.up):
            nn.init.normal_(linear.weight, mean=0.0, std=0.02)
            nn.init.zeros_(linear.bias)
        if zero_init_up:
            nn.init.zeros_(self.up.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.up(self.activation(self.down(hidden)))

    def add_to_output(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        """Forward hook for a ``feed_forward`` module: FFN(x) + A(x).

        A bound method (not a closure), so ``copy.deepcopy`` / pickling of the parent rebinds it to the copy.
        """
        return output + self(inputs[0])


def attach_adapters(encoder_layers: nn.ModuleList, hidden_size: int, bottleneck: int,
                    zero_init_up: bool = False) -> nn.ModuleList:
    """One adapter per encoder layer, hooked onto its ``feed_forward``; the caller registers the returned list."""
    adapters = nn.ModuleList(BottleneckAdapter(hidden_size, bottleneck, zero_init_up) for _ in encoder_layers)
    for layer, adapter in zip(encoder_layers, adapters, strict=True):
        layer.feed_forward.register_forward_hook(adapter.add_to_output)
    return adapters

