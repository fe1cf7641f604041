"""Losses by name, so configs select them with a string and typos list the valid choices."""
from __future__ import annotations

from typing import Any

from torch import nn

from nawsv.losses.aam import AAMSoftmax
from nawsv.losses.eapn import EAPNLoss
from nawsv.losses.hint import HintLoss

LOSSES: dict[str, type[nn.Module]] = {
    "aam_softmax": AAMSoftmax,
    "eapn": EAPNLoss,
    "hint": HintLoss,
}


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the loss registered as ``name`` with ``kwargs``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)
