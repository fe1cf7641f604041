"""Shared by the converter tests: move a model's tensors off their initial values."""
from __future__ import annotations

import torch


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every float tensor off its initial value, keeping its scale (BatchNorm variances in [0.5, 1.5]).

    Initial values (LayerNorm weights 1, biases 0, BatchNorm statistics 0 / 1) would hide a tensor converted to
    the wrong place; the scale is kept so that the embeddings stay of order 1, as a trained model's.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.dtype.is_floating_point:
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif tensor.abs().max() == 0:
                tensor.copy_(0.1 * noise)
            else:
                tensor.mul_(1 + 0.1 * noise)
