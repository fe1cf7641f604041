"""Typed options of stage 5 (``conf/extract.yaml``); import-light, validated before any model is loaded."""
from __future__ import annotations

import dataclasses

from nawsv.data.audio import SAMPLE_RATE


@dataclasses.dataclass
class SegmentOptions:
    """The test-time segment protocol of the paper (spec 2.1 / 5.1): ``num`` windows of ``seconds`` each."""

    enabled: bool = True          # write xvector_seg.{ark,scp}: one (num x dim) matrix per utterance
    num: int = 5                  # segments per utterance; starts linspace(0, len - seg, num) truncated to int
    seconds: float = 3.0          # segment length; shorter utterances are wrap-padded to it first
    batch_size: int = 32          # segments per forward pass (all segments have the same length)

    def __post_init__(self) -> None:
        if self.num < 1:
            raise ValueError(f"segments.num must be >= 1, got {self.num}")
        if self.seconds <= 0.05:
            raise ValueError(f"segments.seconds must be > 0.05 (the model needs a few frames), got {self.seconds}")
        if self.batch_size < 1:
            raise ValueError(f"segments.batch_size must be >= 1, got {self.batch_size}")

    @property
    def samples(self) -> int:
        return round(self.seconds * SAMPLE_RATE)


@dataclasses.dataclass
class WholeOptions:
    """Whole-utterance embeddings: one forward pass per utterance up to ``max_seconds``."""

    enabled: bool = True          # write xvector.{ark,scp}: one vector per utterance
    max_seconds: float = 60.0     # attention memory grows with T^2: longer utterances are cut into
                                  # ceil(len / max) equal windows (linspace starts) and their embeddings averaged
    batch_size: int = 8           # utterances of exactly equal length per forward pass (no padding, ever)

    def __post_init__(self) -> None:
        if self.max_seconds < 1.0:
            raise ValueError(f"whole.max_seconds must be >= 1, got {self.max_seconds}")
        if self.batch_size < 1:
            raise ValueError(f"whole.batch_size must be >= 1, got {self.batch_size}")

    @property
    def max_samples(self) -> int:
        return round(self.max_seconds * SAMPLE_RATE)


@dataclasses.dataclass
class ExtractConfig:
    """Options of stage 5; ``segments``/``whole`` decide what is written, the rest only how fast."""

    segments: SegmentOptions = dataclasses.field(default_factory=SegmentOptions)
    whole: WholeOptions = dataclasses.field(default_factory=WholeOptions)
    num_workers: int = 2          # audio-loading processes (DataLoader workers); 0 loads in the main process
    chunk_size: int = 100         # utterances per partial ark (unit of --job sharding and of resuming)
    bf16: bool = False            # bf16 autocast on CUDA (faster; embeddings differ slightly); CPU is always fp32

    def __post_init__(self) -> None:
        if not (self.segments.enabled or self.whole.enabled):
            raise ValueError("segments.enabled and whole.enabled are both false: nothing to extract")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")

    @property
    def kinds(self) -> list[str]:
        """The embedding kinds to write, in a fixed order."""
        return [k for k, on in (("whole", self.whole.enabled), ("segments", self.segments.enabled)) if on]

    def definition(self, precision: str) -> dict:
        """What determines the embedding values (batch sizes, workers and chunking do not)."""
        return {"whole_max_seconds": self.whole.max_seconds, "segments_num": self.segments.num,
                "segments_seconds": self.segments.seconds, "precision": precision}
