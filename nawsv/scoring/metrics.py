"""Verification metrics: EER, normalised minimum DCF and DET points, all from one sorted threshold sweep.

Conventions (the same in every function, and pinned by a brute-force test):

- A trial is *accepted* when ``score >= threshold``.
- The sweep visits ``+inf`` (nothing accepted) and then every unique score value from the highest to the
  lowest (the lowest accepts everything). Tied scores therefore always fall on the same side of a threshold.
- ``FNR(t)`` = targets with score < t / targets; ``FPR(t)`` = non-targets with score >= t / non-targets.
- EER (``sweep``, the default): at the sweep threshold minimising ``|FNR - FPR|`` (the highest such threshold
  on ties), the mean of FNR and FPR there. No interpolation, so the value is exactly reproducible from a score
  file. ``roc_interp`` is the released code's EER (spec 5.1: sklearn's ROC and Brent's root of
  ``1 - FPR - TPR(FPR)`` on the linearly interpolated curve): the FPR where the piecewise-linear ROC through
  the sweep points crosses FNR = FPR.
- minDCF(p): the minimum over the sweep of ``(c_miss * p * FNR + c_fa * (1 - p) * FPR) / min(c_miss * p,
  c_fa * (1 - p))`` (the highest threshold on ties).

Every metric is a fraction (0.0123), not a percentage; tables multiply EER by 100.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from nawsv.utils.errors import DataError


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Error rates at every threshold of the sweep, ordered from ``+inf`` down to the lowest score."""

    thresholds: np.ndarray   # float64, first element +inf
    fnr: np.ndarray          # float64, starts at 1.0, non-increasing
    fpr: np.ndarray          # float64, starts at 0.0, non-decreasing


@dataclasses.dataclass(frozen=True)
class Metrics:
    """EER and minDCF of one score list, with the thresholds that achieve them."""

    eer: float
    eer_threshold: float
    min_dcf: dict[float, float]
    min_dcf_threshold: dict[float, float]
    num_target: int
    num_nontarget: int


def _validated(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool],
               source: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise DataError(f"{source}: {scores.size} scores but {labels.size} labels; every trial needs exactly one "
                        f"score and one target/nontarget label")
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{source}: labels must be booleans or 0/1 (1 = target trial)")
        labels = labels.astype(bool)
    finite = np.isfinite(scores)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{source}: {int((~finite).sum())} score(s) are NaN or infinite (first at trial {bad + 1}: "
                        f"{scores[bad]}); fix the embeddings or the scoring that produced them")
    num_target = int(labels.sum())
    if num_target == 0 or num_target == labels.size:
        missing = "target" if num_target == 0 else "non-target"
        raise DataError(f"{source}: the trial list has no {missing} trials; EER and minDCF need both kinds")
    return scores, labels


def threshold_sweep(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool],
                    source: str = "scores") -> Sweep:
    """FNR and FPR at ``+inf`` and at every unique score, from a single sort."""
    scores, labels = _validated(scores, labels, source)
    order = np.argsort(scores, kind="stable")[::-1]
    return sorted_sweep(scores[order], labels[order])


def sorted_sweep(sorted_scores: np.ndarray, sorted_labels: np.ndarray) -> Sweep:
    """:func:`threshold_sweep` of scores already sorted (descending, stable) with their labels in that order."""
    accepted_targets = np.cumsum(sorted_labels, dtype=np.int64)
    accepted_total = np.arange(1, sorted_scores.size + 1, dtype=np.int64)
    # The last position of every run of equal scores: accepting that score accepts the whole run.
    group_end = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    num_target = int(accepted_targets[-1])
    num_nontarget = sorted_scores.size - num_target
    acc_tar = np.concatenate(([0], accepted_targets[group_end]))
    acc_non = np.concatenate(([0], accepted_total[group_end] - accepted_targets[group_end]))
    thresholds = np.concatenate(([np.inf], sorted_scores[group_end]))
    fnr = (num_target - acc_tar) / num_target
    fpr = acc_non / num_nontarget
    return Sweep(thresholds, fnr, fpr)


EER_METHODS = ("sweep", "roc_interp")
EER_DESCRIPTIONS = {
    "sweep": "taken at the threshold minimising |FNR - FPR| over all unique scores (no interpolation)",
    "roc_interp": "the FPR where the linearly interpolated ROC crosses FNR = FPR (the released code's "
                  "sklearn ROC + brentq form)",
}


def _eer_sweep(sweep: Sweep) -> tuple[float, float]:
    best = int(np.argmin(np.abs(sweep.fnr - sweep.fpr)))
    return float((sweep.fnr[best] + sweep.fpr[best]) / 2), float(sweep.thresholds[best])


def _eer_roc_interp(sweep: Sweep) -> tuple[float, float]:
    """Root of g = FNR - FPR along the ROC polyline; g is 1 at the first sweep point and -1 at the last."""
    gap = sweep.fnr - sweep.fpr
    right = int(np.argmax(gap <= 0.0))
    left = right - 1
    if gap[right] == 0.0 or sweep.fpr[right] == sweep.fpr[left]:
        return float(sweep.fpr[right]), float(sweep.thresholds[right])
    share = gap[left] / (gap[left] - gap[right])
    eer = sweep.fpr[left] + share * (sweep.fpr[right] - sweep.fpr[left])
    low, high = sweep.thresholds[right], sweep.thresholds[left]
    threshold = low if not np.isfinite(high) else high + share * (low - high)
    return float(eer), float(threshold)


def _eer(sweep: Sweep, method: str = "sweep") -> tuple[float, float]:
    if method == "sweep":
        return _eer_sweep(sweep)
    if method == "roc_interp":
        return _eer_roc_interp(sweep)
    raise DataError(f"unknown EER method {method!r}; choose from {list(EER_METHODS)}")


def _min_dcf(sweep: Sweep, p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    if not 0.0 < p_target < 1.0:
        raise DataError(f"p_target must be strictly between 0 and 1, got {p_target}")
    dcf = c_miss * p_target * sweep.fnr + c_fa * (1.0 - p_target) * sweep.fpr
    best = int(np.argmin(dcf))
    return float(dcf[best] / min(c_miss * p_target, c_fa * (1.0 - p_target))), float(sweep.thresholds[best])


def compute_eer(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool],
                method: str = "sweep") -> tuple[float, float]:
    """Equal error rate (fraction) and its threshold, under the conventions of this module."""
    return _eer(threshold_sweep(scores, labels), method)


def compute_min_dcf(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool], p_target: float,
                    c_miss: float = 1.0, c_fa: float = 1.0) -> tuple[float, float]:
    """Normalised minimum detection cost and its threshold."""
    return _min_dcf(threshold_sweep(scores, labels), p_target, c_miss, c_fa)


def det_curve(scores: np.ndarray | Sequence[float],
              labels: np.ndarray | Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, fnr, thresholds)`` of the sweep, for DET plots (thresholds descending, +inf first)."""
    sweep = threshold_sweep(scores, labels)
    return sweep.fpr, sweep.fnr, sweep.thresholds


def compute_metrics(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool],
                    p_targets: Sequence[float] = (0.01, 0.05), c_miss: float = 1.0, c_fa: float = 1.0,
                    source: str = "scores", eer_method: str = "sweep") -> Metrics:
    """EER and minDCF for several operating points from one sort (the cost of large trial lists is the sort)."""
    num_target = int(np.asarray(labels).astype(bool).sum())
    return sweep_metrics(threshold_sweep(scores, labels, source), num_target, int(np.asarray(labels).size) - num_target,
                         p_targets, c_miss, c_fa, eer_method)


def sweep_metrics(sweep: Sweep, num_target: int, num_nontarget: int, p_targets: Sequence[float] = (0.01, 0.05),
                  c_miss: float = 1.0, c_fa: float = 1.0, eer_method: str = "sweep") -> Metrics:
    """:func:`compute_metrics` of a sweep already made."""
    eer, eer_threshold = _eer(sweep, eer_method)
    dcf = {float(p): _min_dcf(sweep, float(p), c_miss, c_fa) for p in p_targets}
    return Metrics(eer=eer, eer_threshold=eer_threshold, min_dcf={p: v for p, (v, _) in dcf.items()},
                   min_dcf_threshold={p: t for p, (_, t) in dcf.items()}, num_target=num_target,
                   num_nontarget=num_nontarget)
