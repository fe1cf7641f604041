"""SpecAugment-style span masking of WavLM features, drawn from a torch Generator the trainer owns.

Same recipe as Hugging Face's ``_compute_mask_indices`` (number of spans ``max(int(p * T / len + u), min)``,
distinct start positions, spans may overlap) but with ``u ~ U(0, 1)`` drawn per sample and every draw taken
from the generator passed in, so a resumed run reproduces its masks exactly and no global RNG is touched.
"""
from __future__ import annotations

import torch

from nawsv.models.config import SSLConfig


def num_spans(length: int, prob: float, span: int, min_spans: int, uniform: float) -> int:
    """Spans to mask on an axis of ``length`` (probabilistic rounding, lower bound, and HF's two caps)."""
    if prob <= 0.0:
        return 0
    count = max(int(prob * length / span + uniform), min_spans)
    if count * span > length:
        count = length // span
    return min(count, max(length - span + 1, 0))


def span_starts(batch: int, length: int, prob: float, span: int, min_spans: int,
                generator: torch.Generator) -> list[torch.Tensor]:
    """Per sample, the distinct start indices of its masked spans (each span fits inside the axis)."""
    uniforms = torch.rand(batch, generator=generator, device=generator.device).tolist()
    starts = []
    for uniform in uniforms:
        count = num_spans(length, prob, span, min_spans, uniform)
        if count == 0:
            starts.append(torch.zeros(0, dtype=torch.long))
            continue
        order = torch.randperm(length - span + 1, generator=generator, device=generator.device)
        starts.append(order[:count].cpu())
    return starts


def span_mask(batch: int, length: int, prob: float, span: int, min_spans: int,
              generator: torch.Generator) -> torch.Tensor:
    """Boolean mask [batch, length], True inside a masked span."""
    mask = torch.zeros(batch, length, dtype=torch.bool)
    offsets = torch.arange(span)
    for row, starts in enumerate(span_starts(batch, length, prob, span, min_spans, generator)):
        if starts.numel():
            mask[row, (starts[:, None] + offsets).reshape(-1)] = True
    return mask


def apply_spec_masks(hidden: torch.Tensor, mask_embedding: torch.Tensor, cfg: SSLConfig,
                     generator: torch.Generator) -> torch.Tensor:
    """Replace time spans of ``hidden`` [B, T, H] by the learned embedding and zero channel spans."""
    batch, frames, channels = hidden.shape
    time_mask = span_mask(batch, frames, cfg.mask_time_prob, cfg.mask_time_length, cfg.mask_time_min_masks,
                          generator).to(hidden.device)
    channel_mask = span_mask(batch, channels, cfg.mask_feature_prob, cfg.mask_feature_length,
                             cfg.mask_feature_min_masks, generator).to(hidden.device)
    hidden = torch.where(time_mask[:, :, None], mask_embedding.to(hidden.dtype), hidden)
    return hidden.masked_fill(channel_mask[:, None, :], 0.0)
