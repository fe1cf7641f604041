"""Which samples each embedding sees: the paper's N-segment windows and capped whole-utterance windows.

Pure numpy, shared by stage 5, the Python API and the export check, so all of them cut audio identically.

- Segments (spec 2.1): ``num`` windows of ``seg`` samples starting at ``linspace(0, len - seg, num)``
  truncated to int: the first at sample 0, the last flush with the end. An utterance shorter than one
  segment is first wrap-padded (repeated from its start, numpy ``mode="wrap"``) to exactly ``seg`` samples,
  so all ``num`` windows are that padded copy. (The original's padding call was broken, spec 2.1; this is
  its evident intent, the same padding its training crops use.)
- Whole utterance: the utterance itself when it is at most ``max`` samples long; otherwise
  ``n = ceil(len / max)`` equal windows of ``ceil(len / n)`` samples at linspace starts (they tile the whole
  utterance with small overlaps) whose embeddings are averaged. Utterances shorter than
  :data:`MIN_WHOLE_SAMPLES` (two WavLM frames) are wrap-padded to it, as the back-end needs two frames.
"""
from __future__ import annotations

import numpy as np

from nawsv.models.config import FRAME_STRIDE, RECEPTIVE_FIELD

MIN_WHOLE_SAMPLES = RECEPTIVE_FIELD + FRAME_STRIDE     # 720 samples = 2 frames (std pooling needs two)


def segment_starts(num_samples: int, segment_samples: int, count: int) -> np.ndarray:
    """Start indices of ``count`` windows; all zero when the utterance is not longer than one window."""
    if num_samples <= segment_samples:
        return np.zeros(count, dtype=np.int64)
    return np.linspace(0, num_samples - segment_samples, count).astype(np.int64)


def wrap_pad(samples: np.ndarray, length: int) -> np.ndarray:
    """Repeat a short utterance from its start until it is ``length`` samples long; longer ones are unchanged."""
    if samples.size >= length:
        return samples
    return np.pad(samples, (0, length - samples.size), mode="wrap")


def cut_segments(samples: np.ndarray, segment_samples: int, count: int) -> np.ndarray:
    """The ``count`` x ``segment_samples`` windows of one utterance (wrap-padded first when short)."""
    padded = wrap_pad(samples, segment_samples)
    starts = segment_starts(padded.size, segment_samples, count)
    return np.stack([padded[start:start + segment_samples] for start in starts])


def whole_windows(samples: np.ndarray, max_samples: int) -> np.ndarray:
    """One row (the utterance) or, above ``max_samples``, equal windows whose embeddings are averaged."""
    padded = wrap_pad(samples, MIN_WHOLE_SAMPLES)
    if padded.size <= max_samples:
        return padded[None, :]
    count = -(-padded.size // max_samples)
    return cut_segments(padded, -(-padded.size // count), count)
