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


CALIBRATION_VARIANTS = ("score", "qmf", "qmf_snr")


@dataclasses.dataclass
class CalibrationConfig:
    """Calibration of scores to LLRs on trials drawn from the training set (nawsv.scoring.calibration_stage).

    The calibration sets are ``utts_per_speaker`` utterances of every training speaker, clean and corrupted with
    the training half of MUSAN at every (category, SNR) here; trials pair utterances within one condition."""

    enabled: bool = True
    variants: list[str] = dataclasses.field(default_factory=lambda: list(CALIBRATION_VARIANTS))
    decision_variant: str = "qmf_snr"   # the calibrator the export package and the Verifier decide with
    p_fit: float = 0.05                 # effective target prior of the weighted logistic regression
    p_target: float = 0.01              # the default operating point of decisions (Verifier, nawsv verify)
    seed: int = 0
    utts_per_speaker: int = 4
    max_target_trials: int = 20000      # per condition (all same-speaker pairs when fewer)
    max_nontarget_trials: int = 50000   # per condition, drawn uniformly from the different-speaker pairs
    categories: list[str] = dataclasses.field(default_factory=lambda: ["noise", "music", "babble"])
    snrs: list[int] = dataclasses.field(default_factory=lambda: [0, 5, 10, 15, 20])
    babble_talkers: tuple[int, int] = (3, 6)

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in CALIBRATION_VARIANTS]
        if unknown or not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"calibration.variants must be distinct values of {list(CALIBRATION_VARIANTS)}, got "
                             f"{self.variants}")
        if self.decision_variant not in self.variants:
            raise ValueError(f"calibration.decision_variant {self.decision_variant!r} must be one of variants "
                             f"{self.variants}")
        for key in ("p_fit", "p_target"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ValueError(f"calibration.{key} must be in (0, 1), got {getattr(self, key)}")
        if self.utts_per_speaker < 2:
            raise ValueError(f"calibration.utts_per_speaker must be >= 2 (target trials need pairs), got "
                             f"{self.utts_per_speaker}")
        if self.max_target_trials < 1 or self.max_nontarget_trials < 1:
            raise ValueError("calibration.max_target_trials and max_nontarget_trials must be >= 1")


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
    calibration: CalibrationConfig = dataclasses.field(default_factory=CalibrationConfig)

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
