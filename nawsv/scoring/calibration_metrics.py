"""Calibration metrics of log-likelihood-ratio scores: Cllr, minCllr (PAV) and the actual DCF.

Conventions (natural logarithms for LLRs; Cllr in bits, as in BOSARIS and the NIST SREs):

- ``Cllr = 1/(2 ln 2) * (mean_tar log(1 + e^-llr) + mean_non log(1 + e^llr))``: 0 for perfect, 1 for an
  uninformative system that always says llr = 0; above 1 for a harmful (miscalibrated) one.
- ``minCllr``: the Cllr after the optimal monotone re-mapping of the scores, found by the pool-adjacent-violators
  (PAV) algorithm; tied scores are pooled first so the re-mapping is a function of the score. Cllr - minCllr is
  the calibration loss.
- actual DCF at operating point (p, C_miss, C_fa): decisions at the Bayes threshold
  ``theta = log(C_fa (1 - p) / (C_miss p))``, a trial accepted when ``llr >= theta`` (the same ``>=`` as
  :mod:`nawsv.scoring.metrics`), normalised by ``min(C_miss p, C_fa (1 - p))`` like minDCF.

Every function also takes per-trial weights [R, N] (resampled populations of the bootstrap) and then returns
one value per row; unweighted calls return floats.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from nawsv.scoring.metrics import _validated

LN2 = math.log(2.0)


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The LLR threshold that minimises the expected cost at this operating point."""
    return math.log(c_fa * (1.0 - p_target) / (c_miss * p_target))


def _class_means(values_tar: np.ndarray, values_non: np.ndarray, labels: np.ndarray,
                 weights: np.ndarray | None) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Means of per-trial values over targets and over non-targets (per weight row when weights are given)."""
    if weights is None:
        return float(values_tar[labels].mean()), float(values_non[~labels].mean())
    tar_w = weights * labels
    non_w = weights * ~labels
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((tar_w @ np.where(labels, values_tar, 0.0)) / tar_w.sum(axis=1),
                (non_w @ np.where(labels, 0.0, values_non)) / non_w.sum(axis=1))


def cllr(llr: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool],
         weights: np.ndarray | None = None) -> float | np.ndarray:
    """Log-likelihood-ratio cost in bits (NaN rows where a weight row has no target or no non-target)."""
    llr = np.asarray(llr, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    miss, false_alarm = _class_means(np.logaddexp(0.0, -llr), np.logaddexp(0.0, llr), labels, weights)
    return (miss + false_alarm) / (2.0 * LN2)


def pav(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted isotonic (non-decreasing) regression of ``values`` in the given order (pool adjacent violators)."""
    means: list[float] = []
    totals: list[float] = []
    counts: list[int] = []
    for value, weight in zip(values.tolist(), weights.tolist()):
        means.append(value)
        totals.append(weight)
        counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            weight = totals[-2] + totals[-1]
            means[-2] = (means[-2] * totals[-2] + means[-1] * totals[-1]) / weight
            totals[-2] = weight
            counts[-2] += counts[-1]
            del means[-1], totals[-1], counts[-1]
    return np.repeat(np.array(means), counts)


def optimal_llr(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool]) -> np.ndarray:
    """The PAV re-mapping of the scores to LLRs (+-inf at the ends where a pool holds one class only)."""
    scores, labels = _validated(scores, labels, "calibration scores")
    unique, group = np.unique(scores, return_inverse=True)           # ascending; tied scores share a group
    counts = np.bincount(group, minlength=unique.size).astype(np.float64)
    targets = np.bincount(group, weights=labels.astype(np.float64), minlength=unique.size)
    posterior = pav(targets / counts, counts)
    num_tar = int(labels.sum())
    prior_log_odds = math.log(num_tar / (labels.size - num_tar))
    with np.errstate(divide="ignore"):
        log_odds = np.log(posterior) - np.log1p(-posterior)
    return (log_odds - prior_log_odds)[group]


def min_cllr(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool]) -> float:
    """Cllr of the PAV-optimal monotone re-mapping of the scores (what perfect calibration would reach)."""
    return float(cllr(optimal_llr(scores, labels), labels))


def act_dcf(llr: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool], p_target: float,
            c_miss: float = 1.0, c_fa: float = 1.0, weights: np.ndarray | None = None) -> float | np.ndarray:
    """Normalised detection cost of the decisions ``llr >= bayes_threshold(p_target, c_miss, c_fa)``."""
    llr = np.asarray(llr, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    accepted = (llr >= bayes_threshold(p_target, c_miss, c_fa)).astype(np.float64)
    miss, false_alarm = _class_means(1.0 - accepted, accepted, labels, weights)
    cost = c_miss * p_target * miss + c_fa * (1.0 - p_target) * false_alarm
    return cost / min(c_miss * p_target, c_fa * (1.0 - p_target))
