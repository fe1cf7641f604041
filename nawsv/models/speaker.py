"""The fine-tuned speaker model (SSL front-end + back-end) as one module and one self-describing file.

``avg_model.pt`` holds the student state (WavLM config + weights + adapters), the back-end name, its
constructor arguments and weights, so extraction, export and the Python API rebuild the model without the
training configs or the original pre-trained directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from nawsv.models.registry import build_backend
from nawsv.models.ssl import SSLEncoder, build_student_from_state, encoder_state
from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import ExperimentError

SPEAKER_FORMAT = "nawsv.speaker_model.v1"


class SpeakerEmbedder(nn.Module):
    """Waveforms [B, T] at 16 kHz -> speaker embeddings [B, D]."""

    def __init__(self, ssl: SSLEncoder, backend: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.ssl = ssl
        self.backend = backend
        self.embed_dim = embed_dim

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.backend(self.ssl(wav))


def save_speaker_model(path: str | Path, ssl: SSLEncoder, backend_name: str, backend_kwargs: dict[str, Any],
                       backend: nn.Module, **meta: Any) -> None:
    """Write the model file atomically; ``meta`` (e.g. which checkpoints were averaged) is kept alongside."""
    state = {"format": SPEAKER_FORMAT, "ssl": encoder_state(ssl), "backend_name": backend_name,
             "backend_kwargs": dict(backend_kwargs),
             "backend_state": {k: v.detach().cpu() for k, v in backend.state_dict().items()}, "meta": meta}
    with atomic_open(path, "wb", encoding=None) as handle:
        torch.save(state, handle)


def load_speaker_model(path: str | Path, device: str | torch.device = "cpu") -> SpeakerEmbedder:
    """Rebuild a model written by :func:`save_speaker_model`, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"speaker model {path} does not exist; run the fine-tuning stage (4) first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt or foreign file
        raise ExperimentError(f"speaker model {path} cannot be read ({exc}); rerun stage 4") from None
    if not isinstance(state, dict) or state.get("format") != SPEAKER_FORMAT:
        raise ExperimentError(f"{path} is not a nawsv speaker model (format {state.get('format')!r}, "
                              f"expected {SPEAKER_FORMAT!r})")
    ssl = build_student_from_state(state["ssl"])
    backend = build_backend(state["backend_name"], **state["backend_kwargs"])
    try:
        backend.load_state_dict(state["backend_state"])
    except RuntimeError as exc:
        raise ExperimentError(f"{path}: the {state['backend_name']} weights do not fit this version of nawsv "
                              f"({str(exc).splitlines()[0]}); retrain stage 4 or use the nawsv version that "
                              f"wrote it") from None
    model = SpeakerEmbedder(ssl, backend, int(state["backend_kwargs"]["embed_dim"])).to(device)
    model.eval()
    return model
