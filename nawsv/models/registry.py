"""Back-ends by name, so configs select them with a string and typos list the valid choices."""
from __future__ import annotations

from typing import Any

from torch import nn

from nawsv.models.ecapa import EcapaTdnn
from nawsv.models.ecapa_wespeaker import WeSpeakerEcapaTdnn
from nawsv.models.heads import WarmupHead

BACKENDS: dict[str, type[nn.Module]] = {
    "ecapa_tdnn_small": EcapaTdnn,
    "ecapa_tdnn_wespeaker": WeSpeakerEcapaTdnn,       # models imported from WeSpeaker's SSL recipe
    "warmup_head": WarmupHead,
}


def build_backend(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the back-end registered as ``name`` with ``kwargs``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {sorted(BACKENDS)}")
    return BACKENDS[name](**kwargs)
