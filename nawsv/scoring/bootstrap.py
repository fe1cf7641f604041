"""Bootstrap confidence intervals of EER and minDCF that respect the trial structure.

Trials are not independent: every utterance enters many trials and every speaker many more, so resampling
trials one by one understates the spread. We resample *units* (speakers by default, or utterances) with
replacement and give each trial the weight it has in the resampled population:

- utterance units: trial (a, b) appears ``m_a * m_b`` times (every copy of a against every copy of b);
- speaker units: a non-target trial between speakers s and t appears ``m_s * m_t`` times, a target trial of
  speaker s ``m_s`` times (once inside each copy of s; two copies of one speaker are not a target pair that
  exists in the list).

Weighted error rates then come from cumulative sums of integer weights over scores sorted once, so a
resample costs a few vector passes and no re-sort. The draws depend only on (seed, trial list, units), so
every condition, method and experiment scored on the same list shares them: a paired difference of two
systems uses the same populations for both, and a system compared with itself differs by exactly 0.

Error rates follow :mod:`nawsv.scoring.metrics` exactly (same sweep, tie and argmin rules); with all weights
1 the result equals :func:`nawsv.scoring.metrics.compute_metrics`.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Mapping, Sequence

import numpy as np

from nawsv.scoring.config import BootstrapConfig
from nawsv.scoring.metrics import _validated, compute_metrics
from nawsv.utils.errors import DataError
from nawsv.utils.seeding import stable_seed

Unit = Literal["speaker", "utterance"]
MAX_CHUNK_ELEMENTS = 1 << 24        # weights per chunk of resamples (int32: 64 MB per array)


@dataclasses.dataclass(frozen=True)
class TrialUnits:
    """The unit index of both sides of every trial; a target trial of speaker units has ``test == -1``."""

    enrol: np.ndarray            # int64 [num_trials], index into ``names``
    test: np.ndarray             # int64 [num_trials]; -1 marks "weighted by the enrol unit only"
    names: list[str]             # sorted unit names (speakers or utterance keys)
    unit: Unit


def trial_units(pairs: Sequence[tuple[str, str]], unit: Unit, utt2spk: Mapping[str, str] | None = None,
                source: str = "the trial list") -> TrialUnits:
    """Map the (enrol, test) keys of a trial list to resampling units."""
    if unit == "speaker":
        if utt2spk is None:
            raise DataError(f"{source}: speaker resampling needs utt2spk; pass it or use bootstrap.unit=utterance")
        missing = next((k for pair in pairs for k in pair if k not in utt2spk), None)
        if missing is not None:
            raise DataError(f"{source}: utterance {missing!r} has no speaker in utt2spk; rerun stage 1 or use "
                            f"bootstrap.unit=utterance")
        sides = [(utt2spk[a], utt2spk[b]) for a, b in pairs]
    elif unit == "utterance":
        sides = list(pairs)
    else:
        raise DataError(f"unknown bootstrap unit {unit!r}; choose from ['speaker', 'utterance']")
    names = sorted({name for pair in sides for name in pair})
    index = {name: i for i, name in enumerate(names)}
    enrol = np.array([index[a] for a, _ in sides], dtype=np.int64)
    test = np.array([index[b] for _, b in sides], dtype=np.int64)
    if unit == "speaker":
        test[enrol == test] = -1
    return TrialUnits(enrol, test, names, unit)


@dataclasses.dataclass(frozen=True)
class Draws:
    """The resamples of a list of units: row r holds how often each unit was drawn in resample r.

    Each row comes from its own seed (seed, number of units, r), so rows are made chunk by chunk on demand
    (1,000 x 145,160 utterance counts would be 580 MB) and are the same however they are chunked.
    """

    num_units: int
    resamples: int
    seed: int

    def rows(self, start: int, stop: int) -> np.ndarray:
        """int32 [stop - start, num_units]; every row sums to num_units."""
        out = np.empty((stop - start, self.num_units), dtype=np.int32)
        for position, row in enumerate(range(start, stop)):
            rng = np.random.default_rng(stable_seed(self.seed, "bootstrap", self.num_units, row))
            out[position] = np.bincount(rng.integers(0, self.num_units, self.num_units), minlength=self.num_units)
        return out


def draws_for(units: TrialUnits, cfg: BootstrapConfig) -> Draws:
    """The configured resamples of a trial list's units (the same for every condition, method and experiment)."""
    return Draws(len(units.names), cfg.resamples, cfg.seed)


@dataclasses.dataclass(frozen=True)
class Replicates:
    """Metric values (fractions) of the original trials and of every resample; NaN marks a degenerate resample
    (no target or no non-target trial drawn)."""

    eer: float
    min_dcf: dict[float, float]
    eer_draws: np.ndarray                    # float64 [resamples]
    min_dcf_draws: dict[float, np.ndarray]

    def draws(self, metric: str) -> np.ndarray:
        """``"eer"`` or ``"mindcf_<p>"`` draws (fractions)."""
        return self.eer_draws if metric == "eer" else self.min_dcf_draws[_dcf_key(self.min_dcf_draws, metric)]

    def value(self, metric: str) -> float:
        return self.eer if metric == "eer" else self.min_dcf[_dcf_key(self.min_dcf, metric)]

    def intervals(self, confidence: float) -> dict[str, tuple[float, float]]:
        """``{"eer": (low, high), "mindcf_<p>": ...}`` (fractions), as results rows keep them."""
        out = {"eer": percentile_interval(self.eer_draws, confidence)}
        out.update({f"mindcf_{p:g}": percentile_interval(d, confidence) for p, d in self.min_dcf_draws.items()})
        return out


def _dcf_key(table: Mapping[float, object], metric: str) -> float:
    for p in table:
        if metric == f"mindcf_{p:g}":
            return p
    raise KeyError(f"unknown metric {metric!r}; have eer, {', '.join(f'mindcf_{p:g}' for p in table)}")


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


def bootstrap_metrics(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool], units: TrialUnits,
                      draws: Draws, p_targets: Sequence[float] = (0.01, 0.05), c_miss: float = 1.0,
                      c_fa: float = 1.0, source: str = "scores") -> Replicates:
    """EER and minDCF of the trials (as :func:`compute_metrics`) and of every resample in ``draws``."""
    scores, labels = _validated(scores, labels, source)
    if units.enrol.shape != scores.shape:
        raise DataError(f"{source}: {scores.size} scores but {units.enrol.size} trials in the bootstrap units")
    if draws.num_units != len(units.names):
        raise DataError(f"{source}: the draws are of {draws.num_units} units, the trials have {len(units.names)}")
    point = compute_metrics(scores, labels, p_targets, c_miss, c_fa, source)
    trials = _SortedTrials(scores, labels, units)
    eer_draws = np.empty(draws.resamples)
    dcf_draws = {float(p): np.empty(draws.resamples) for p in p_targets}
    chunk = max(1, min(draws.resamples, MAX_CHUNK_ELEMENTS // max(scores.size, 1)))
    for start in range(0, draws.resamples, chunk):
        stop = min(start + chunk, draws.resamples)
        block = draws.rows(start, stop)
        block = np.hstack([block, np.ones((block.shape[0], 1), dtype=np.int32)])
        part_eer, part_dcf = _chunk_metrics(trials, block, p_targets, c_miss, c_fa)
        eer_draws[start:stop] = part_eer
        for p in dcf_draws:
            dcf_draws[p][start:stop] = part_dcf[p]
    return Replicates(point.eer, dict(point.min_dcf), eer_draws, dcf_draws)


def percentile_interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of the valid (non-NaN) draws."""
    valid = draws[np.isfinite(draws)]
    if valid.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(valid, [tail, 100.0 - tail])
    return float(low), float(high)


def mean_draws(cells: Sequence[Replicates], metric: str) -> tuple[float, np.ndarray]:
    """The mean of ``metric`` over cells scored with the same draws (e.g. a noisy average) and its draws."""
    if not cells:
        raise ValueError("no cells to average")
    return (float(np.mean([c.value(metric) for c in cells])),
            np.mean([c.draws(metric) for c in cells], axis=0))


def paired_difference(a: Sequence[Replicates], b: Sequence[Replicates], metric: str,
                      confidence: float) -> tuple[float, float, float]:
    """mean(b) - mean(a) over the same cells and its paired interval (same resamples for both systems)."""
    value_a, draws_a = mean_draws(a, metric)
    value_b, draws_b = mean_draws(b, metric)
    return (value_b - value_a, *percentile_interval(draws_b - draws_a, confidence))
