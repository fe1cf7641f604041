"""Typed configs of stage 6 (scoring, ``conf/score.yaml``) and stage 7 (report, ``conf/report.yaml``)."""
from __future__ import annotations

import dataclasses
from typing import Literal

METHODS = ("cosine", "segment", "full", "asnorm")
METHOD_DESCRIPTIONS = {
    "cosine": "whole-utterance cosine",
    "segment": "mean of the segment-pair cosines (paper: TTA, its noisy protocol)",
    "full": "average of cosine and segment (paper: EER_full, its clean protocol)",
    "asnorm": "AS-norm of the whole-utterance cosine",
}
MUSAN_CATEGORIES = ("noise", "music", "babble")    # the paper's three noisy categories (its "speech" = babble)


def _check_method(name: str, key: str) -> None:
    if name not in METHODS:
        raise ValueError(f"{key}: unknown scoring method {name!r}; choose from {list(METHODS)}")


@dataclasses.dataclass
class BootstrapConfig:
    """95 % intervals of every EER and minDCF: percentile bootstrap over resampled speakers or utterances
    (nawsv.scoring.bootstrap says how trials are weighted)."""

    resamples: int = 1000              # 0 disables the intervals
    unit: Literal["speaker", "utterance"] = "speaker"
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resamples < 0 or 0 < self.resamples < 20:
            raise ValueError(f"bootstrap.resamples must be 0 (off) or >= 20, got {self.resamples}")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"bootstrap.confidence must be in [0.5, 1), got {self.confidence}")

    @property
    def enabled(self) -> bool:
        return self.resamples > 0


@dataclasses.dataclass
class ScoreConfig:
    """Options of stage 6."""

    methods: list[str] = dataclasses.field(default_factory=lambda: list(METHODS))
    asnorm_top_n: int = 300            # cohort speakers kept per utterance (WeSpeaker's top_n)
    p_targets: list[float] = dataclasses.field(default_factory=lambda: [0.01, 0.05])   # minDCF operating points
    c_miss: float = 1.0
    c_fa: float = 1.0
    categories: list[str] = dataclasses.field(default_factory=lambda: ["noise", "music", "babble", "nonspeech"])
    snrs: list[int] = dataclasses.field(default_factory=lambda: [0, 5, 10, 15, 20])
    conditions: list[str] = dataclasses.field(default_factory=list)   # "<category>_<snr>"; empty: discover
    clean_method: str = "full"         # the method shown for clean in summaries (the paper's clean protocol)
    noisy_method: str = "segment"      # the method of the noisy grids (the paper's noisy protocol)
    eer: Literal["sweep", "roc_interp"] = "sweep"   # roc_interp: the released code's interpolated EER (spec 5.1)
    bootstrap: BootstrapConfig = dataclasses.field(default_factory=BootstrapConfig)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods is empty; choose some of " + ", ".join(METHODS))
        for name in self.methods:
            _check_method(name, "methods")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods lists a method twice: {self.methods}")
        _check_method(self.clean_method, "clean_method")
        _check_method(self.noisy_method, "noisy_method")
        if self.eer not in ("sweep", "roc_interp"):
            raise ValueError(f"eer must be sweep or roc_interp, got {self.eer!r}")
        if self.asnorm_top_n < 2:
            raise ValueError(f"asnorm_top_n must be >= 2 (a std of one score is 0), got {self.asnorm_top_n}")
        if not self.p_targets or any(not 0.0 < p < 1.0 for p in self.p_targets):
            raise ValueError(f"p_targets must be a non-empty list of values in (0, 1), got {self.p_targets}")
        if len(set(self.p_targets)) != len(self.p_targets):
            raise ValueError(f"p_targets lists a value twice: {self.p_targets}")
        if self.c_miss <= 0 or self.c_fa <= 0:
            raise ValueError(f"c_miss and c_fa must be positive, got {self.c_miss} and {self.c_fa}")
        if not self.categories or len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories must be a non-empty list without repeats, got {self.categories}")
        for category in self.categories:
            if not category or any(c.isspace() for c in category):
                raise ValueError(f"category {category!r} is empty or contains whitespace")
        if not self.snrs or len(set(self.snrs)) != len(self.snrs):
            raise ValueError(f"snrs must be a non-empty list without repeats, got {self.snrs}")


@dataclasses.dataclass
class ReportConfig:
    """Options of stage 7."""

    det_snr: int = 0          # the SNR whose conditions get DET curves next to clean
    dpi: int = 120

    def __post_init__(self) -> None:
        if self.dpi < 30:
            raise ValueError(f"dpi must be >= 30, got {self.dpi}")
