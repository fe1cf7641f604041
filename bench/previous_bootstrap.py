"""The bootstrap of nawsv before issue 22, kept only as the baseline of ``python -m bench scoring:bootstrap``.

Each resample weighted every trial and swept the whole list (about ten passes over all trials), and searched
the minDCF threshold in float32 (which overestimates it by a few 1e-6 in some resamples). The benchmark times
it against :func:`nawsv.scoring.bootstrap.bootstrap_metrics` on the same draws and reports their differences.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from nawsv.scoring.bootstrap import Draws, TrialUnits
from nawsv.utils.errors import DataError

MAX_CHUNK_ELEMENTS = 1 << 24


class _SortedTrials:
    """Scores sorted once (descending, stable), labels and unit indices in that order, and tie-group ends."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray, units: TrialUnits) -> None:
        order = np.argsort(scores, kind="stable")[::-1]
        ordered = scores[order]
        self.size = scores.size
        self.labels = labels[order].astype(np.int32)
        self.enrol = units.enrol[order]
        test = units.test[order]
        self.test = np.where(test < 0, len(units.names), test)      # the extra column of ones
        ends = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))
        self.group_end = None if ends.size == scores.size else ends  # None: no ties, every position is a threshold


def _chunk_metrics(trials: _SortedTrials, unit_weights: np.ndarray, p_targets: Sequence[float], c_miss: float,
                   c_fa: float) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """EER and minDCF [R] for integer unit weights [R, units + 1] (the last column is all ones); NaN rows where a
    resample holds no target or no non-target trial.

    Cumulative weights are summed in int32 and searched in float32 when below 2**24 (exact integers either way);
    the EER is located by a vectorised bisection on the monotone FNR - FPR, each minDCF by one argmin pass, and
    both are then evaluated in float64 with the formulas of :mod:`nawsv.scoring.metrics`.
    """
    weights = np.take(unit_weights, trials.enrol, axis=1) * np.take(unit_weights, trials.test, axis=1)
    totals = weights.sum(axis=1, dtype=np.int64)
    if totals.max(initial=0) >= 2**31:
        raise DataError(f"bootstrap weights sum to {totals.max()} (over 2**31); use fewer trials per list")
    acc_all = np.cumsum(weights, axis=1, dtype=np.int32)
    acc_tar = np.cumsum(weights * trials.labels, axis=1, dtype=np.int32)
    if trials.group_end is not None:
        acc_all = acc_all[:, trials.group_end]
        acc_tar = acc_tar[:, trials.group_end]
    num_tar = acc_tar[:, -1].astype(np.float64)
    num_non = totals - num_tar
    valid = (num_tar > 0) & (num_non > 0)
    num_tar = np.where(valid, num_tar, 1.0)
    num_non = np.where(valid, num_non, 1.0)
    rows = np.arange(weights.shape[0])

    def rates(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """FNR, FPR at sweep positions ``index`` (-1: the +inf threshold, nothing accepted)."""
        safe = np.maximum(index, 0)
        tar = acc_tar[rows, safe].astype(np.float64)
        non = acc_all[rows, safe].astype(np.float64) - tar
        fnr = np.where(index < 0, 1.0, (num_tar - tar) / num_tar)
        return fnr, np.where(index < 0, 0.0, non / num_non)

    low = np.zeros(rows.size, dtype=np.int64)               # first position with FNR <= FPR (the last always is)
    high = np.full(rows.size, acc_all.shape[1] - 1, dtype=np.int64)
    while np.any(low < high):
        middle = (low + high) // 2
        fnr, fpr = rates(middle)
        crossed = fnr <= fpr
        high = np.where(crossed, middle, high)
        low = np.where(crossed, low, middle + 1)
    fnr_after, fpr_after = rates(low)
    fnr_before, fpr_before = rates(low - 1)
    before = np.abs(fnr_before - fpr_before) <= np.abs(fnr_after - fpr_after)   # ties: the higher threshold
    eer = np.where(before, (fnr_before + fpr_before) / 2, (fnr_after + fpr_after) / 2)
    search = np.float32 if totals.max(initial=0) < 2**24 else np.float64
    acc_all = acc_all.astype(search)
    acc_tar = acc_tar.astype(search)
    dcf = {}
    for p in p_targets:
        norm = min(c_miss * p, c_fa * (1.0 - p))
        miss = (c_miss * p / num_tar).astype(search)[:, None]
        false_alarm = (c_fa * (1.0 - p) / num_non).astype(search)[:, None]
        # the cost minus its constant miss * num_tar: false_alarm * non-targets - miss * targets accepted
        best = np.argmin(false_alarm * acc_all - (miss + false_alarm) * acc_tar, axis=1)
        fnr, fpr = rates(best)
        value = np.minimum(c_miss * p * fnr + c_fa * (1.0 - p) * fpr, c_miss * p) / norm   # or +inf: accept none
        dcf[float(p)] = np.where(valid, value, np.nan)
    return np.where(valid, eer, np.nan), dcf


def previous_bootstrap(scores: np.ndarray, labels: np.ndarray, units: TrialUnits, draws: Draws,
                       p_targets: Sequence[float] = (0.01, 0.05), c_miss: float = 1.0,
                       c_fa: float = 1.0) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """EER and minDCF draws of every resample, as the previous implementation computed them."""
    trials = _SortedTrials(np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool), units)
    eer_draws = np.empty(draws.resamples)
    dcf_draws = {float(p): np.empty(draws.resamples) for p in p_targets}
    chunk = max(1, min(draws.resamples, MAX_CHUNK_ELEMENTS // max(trials.size, 1)))
    for start in range(0, draws.resamples, chunk):
        stop = min(start + chunk, draws.resamples)
        block = draws.rows(start, stop)
        block = np.hstack([block, np.ones((block.shape[0], 1), dtype=np.int32)])
        part_eer, part_dcf = _chunk_metrics(trials, block, p_targets, c_miss, c_fa)
        eer_draws[start:stop] = part_eer
        for p in dcf_draws:
            dcf_draws[p][start:stop] = part_dcf[p]
    return eer_draws, dcf_draws
