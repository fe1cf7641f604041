"""Runs a speaker model on numpy waveforms: batches of equal-length windows, no padding, numpy out.

Padding is never used because WavLM's first convolution is followed by a GroupNorm over the whole input,
so a padded utterance would get a different embedding; only windows of exactly equal length share a batch.
The model runs in eval mode under ``torch.inference_mode``; bf16 autocast only on CUDA and only when asked.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import numpy as np
import torch

from nawsv.extract.segments import cut_segments, whole_windows
from nawsv.utils.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this torch build sees no CUDA device; use --device cpu (or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a torch device; use auto, cpu or cuda[:N]") from None


class Embedder:
    """Embeds windows with ``model`` ([B, T] float32 waveforms -> [B, D]) on ``device``."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], device: torch.device, bf16: bool = False) -> None:
        self.model = model
        self.device = device
        self.bf16 = bf16 and device.type == "cuda"

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass of a [B, T] batch; float32 [B, D] on the CPU."""
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            wav = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return self.model(wav).float().cpu().numpy()

    def embed_windows(self, windows: Sequence[np.ndarray], batch_size: int) -> np.ndarray:
        """Embeddings of ``windows`` in their order; equal lengths are batched (first-seen order of lengths)."""
        by_length: dict[int, list[int]] = {}
        for index, window in enumerate(windows):
            by_length.setdefault(window.size, []).append(index)
        out: np.ndarray | None = None
        for indices in by_length.values():
            for begin in range(0, len(indices), batch_size):
                chosen = indices[begin:begin + batch_size]
                result = self.forward(np.stack([windows[i] for i in chosen]))
                if out is None:
                    out = np.empty((len(windows), result.shape[1]), dtype=np.float32)
                out[chosen] = result
        if out is None:
            raise ValueError("no windows to embed")
        return out

    def whole(self, utterances: Sequence[np.ndarray], max_samples: int, batch_size: int) -> list[np.ndarray]:
        """One vector per utterance: the forward pass of the utterance, or the mean over its capped windows."""
        windows: list[np.ndarray] = []
        owners: list[int] = []
        for index, samples in enumerate(utterances):
            rows = whole_windows(samples, max_samples)
            windows.extend(rows)
            owners.extend([index] * len(rows))
        embeddings = self.embed_windows(windows, batch_size)
        splits = np.flatnonzero(np.diff(owners)) + 1
        return [rows.mean(axis=0, dtype=np.float64).astype(np.float32) if len(rows) > 1 else rows[0]
                for rows in np.split(embeddings, splits)]

    def segments(self, utterances: Sequence[np.ndarray], segment_samples: int, count: int,
                 batch_size: int) -> list[np.ndarray]:
        """One (count x dim) matrix per utterance: the embeddings of its test-time segments."""
        windows = [row for samples in utterances for row in cut_segments(samples, segment_samples, count)]
        embeddings = self.embed_windows(windows, batch_size)
        return [embeddings[i * count:(i + 1) * count] for i in range(len(utterances))]
