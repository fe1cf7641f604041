"""Bootstrap confidence intervals of EER and minDCF that respect the trial structure.

Trials are not independent: every utterance enters many trials and every speaker many more, so resampling
trials one by one understates the spread. We resample *units* (speakers by default, or utterances) with
replacement and give each trial the weight it has in the resampled population:

- utterance units: trial (a, b) appears ``m_a * m_b`` times (every copy of a against every copy of b);
- speaker units: a non-target trial between speakers s and t appears ``m_s * m_t`` times, a target trial of
  speaker s ``m_s`` times (once inside each copy of s; two copies of one speaker are not a target pair that
  exists in the list).

A resample is not swept over every trial. The scores are sorted once and cut into segments of consecutive
thresholds (short next to the point estimate's EER and minDCF thresholds, growing away from them); the
weighted target and non-target counts at every segment bound come, for all resamples at once, from a sparse
product of per-unit pair counts (speaker units) or one multiply per trial (utterance units), see
:meth:`_Sweep.boundary_counts`. The EER lies in the one segment where FNR - FPR changes sign, and a
segment can hold the minDCF only if its cost floor does not exceed the best cost found; only those segments are
swept trial by trial. The draws depend only on (seed, trial list, units), so every condition, method and
experiment scored on the same list shares them: a paired difference of two systems uses the same populations
for both, and a system compared with itself differs by exactly 0.

Every resample's EER (``sweep`` or ``roc_interp``) and minDCF are exactly those of
:func:`nawsv.scoring.metrics.compute_metrics` on the trial list replicated by its weights (the same float64
formulas on exact integer counts, the same tie and argmin rules). A resample without a target or without a
non-target trial has no value (NaN) and is counted in :attr:`Replicates.dropped`. Statistics that have no such
sweep (e.g. calibration costs) can use :func:`resample_statistic`, which hands them every trial's weight.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
from scipy import sparse

from nawsv.scoring.config import BootstrapConfig
from nawsv.scoring.metrics import _validated, sorted_sweep, sweep_metrics
from nawsv.utils.errors import DataError
from nawsv.utils.seeding import stable_seed

Unit = Literal["speaker", "utterance"]
MAX_CHUNK_ELEMENTS = 1 << 22        # unit weights per chunk of resamples (float32: 16 MB)
WARN_DROPPED_FRACTION = 0.01        # results.md warns when more resamples than this are dropped ...
MIN_KEPT_FRACTION = 0.9             # ... and shows no interval when fewer than this remain
CACHED_DRAWS = 1 << 28              # draws kept in memory (one byte each) for the next cell of the same list
MAX_BLOCK_ELEMENTS = 1 << 22        # values per working array of a swept segment
CLASS_SUM_COLUMNS = 32              # resamples per sparse product (unit weights stay in cache)
BY_TRIAL_SHARE = 0.25               # class sums trial by trial when distinct pairs exceed this share of trials
SEGMENT_BASE = 32                   # trials next to a point optimum in its first segments
SEGMENT_GROWTH = 1.25               # each further segment is this much longer


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
    if unit not in ("speaker", "utterance"):
        raise DataError(f"unknown bootstrap unit {unit!r}; choose from ['speaker', 'utterance']")
    keys = [key for pair in pairs for key in pair]
    if unit == "speaker":
        if utt2spk is None:
            raise DataError(f"{source}: speaker resampling needs utt2spk; pass it or use bootstrap.unit=utterance")
        try:
            keys = [utt2spk[key] for key in keys]
        except KeyError as missing:
            raise DataError(f"{source}: utterance {missing.args[0]!r} has no speaker in utt2spk; rerun stage 1 or "
                            f"use bootstrap.unit=utterance") from None
    first_seen: dict[str, int] = {}
    codes = np.fromiter((first_seen.setdefault(key, len(first_seen)) for key in keys), dtype=np.int64,
                        count=len(keys))
    names = sorted(first_seen)
    position = {name: index for index, name in enumerate(names)}
    codes = np.fromiter((position[name] for name in first_seen), dtype=np.int64, count=len(names))[codes]
    enrol, test = codes[0::2].copy(), codes[1::2].copy()
    if unit == "speaker":
        test[enrol == test] = -1
    return TrialUnits(enrol, test, names, unit)


@dataclasses.dataclass(frozen=True)
class Draws:
    """The resamples of a list of units: row r holds how often each unit was drawn in resample r.

    Each row comes from its own seed (seed, number of units, r), so rows are the same however they are
    chunked. All rows are kept (one byte per count) when there are at most CACHED_DRAWS of them, so the other
    cells of the same trial list (stage 6 scores many) do not draw them again; larger sets are drawn chunk by
    chunk on demand.
    """

    num_units: int
    resamples: int
    seed: int
    _kept: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """int32 [stop - start, num_units]; every row sums to num_units."""
        kept = self._kept.get("rows")
        if kept is None and self.num_units * self.resamples <= CACHED_DRAWS:
            kept = self._kept["rows"] = self._draw(0, self.resamples, np.uint8)
        return self._draw(start, stop, np.int32) if kept is None else kept[start:stop].astype(np.int32)

    def _draw(self, start: int, stop: int, dtype: type) -> np.ndarray:
        out = np.empty((stop - start, self.num_units), dtype=dtype)
        for position, row in enumerate(range(start, stop)):
            rng = np.random.default_rng(stable_seed(self.seed, "bootstrap", self.num_units, row))
            counts = np.bincount(rng.integers(0, self.num_units, self.num_units), minlength=self.num_units)
            if counts.max() > np.iinfo(dtype).max:
                return self._draw(start, stop, np.int32)
            out[position] = counts
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
    dropped: int = 0                         # resamples without a target or without a non-target trial

    def draws(self, metric: str) -> np.ndarray:
        """``"eer"`` or ``"mindcf_<p>"`` draws (fractions)."""
        return self.eer_draws if metric == "eer" else self.min_dcf_draws[_dcf_key(self.min_dcf_draws, metric)]

    def value(self, metric: str) -> float:
        return self.eer if metric == "eer" else self.min_dcf[_dcf_key(self.min_dcf, metric)]

    def intervals(self, confidence: float) -> dict[str, tuple[float, float]]:
        """``{"eer": (low, high), "mindcf_<p>": ...}`` (fractions), as results rows keep them; empty when too
        many resamples were dropped (:func:`percentile_interval`)."""
        out = {"eer": percentile_interval(self.eer_draws, confidence)}
        out.update({f"mindcf_{p:g}": percentile_interval(d, confidence) for p, d in self.min_dcf_draws.items()})
        return {metric: bounds for metric, bounds in out.items() if not np.isnan(bounds[0])}


def dropped_note(trials: str, dropped: int, resamples: int) -> str | None:
    """The results.md warning for a trial list whose resamples were dropped (None when at most 1 % were)."""
    if dropped <= WARN_DROPPED_FRACTION * resamples:
        return None
    what = (f"trial list {trials}: {dropped} of {resamples} bootstrap resamples ({100 * dropped / resamples:.1f} %) "
            f"drew no target or no non-target trial and were dropped")
    if resamples - dropped < MIN_KEPT_FRACTION * resamples:          # as percentile_interval decides
        return (f"**No intervals:** {what}; fewer than {100 * MIN_KEPT_FRACTION:g} % remain, so its values have no "
                f"interval (too few speakers hold its target trials; use bootstrap.unit=utterance or a larger list)")
    return f"**Warning:** {what}; its intervals are over the remaining {resamples - dropped}"


def _dcf_key(table: Mapping[float, object], metric: str) -> float:
    for p in table:
        if metric == f"mindcf_{p:g}":
            return p
    raise KeyError(f"unknown metric {metric!r}; have eer, {', '.join(f'mindcf_{p:g}' for p in table)}")


class _Sweep:
    """The sorted trials of one score list and their partition into segments of consecutive sweep positions.

    Sweep position ``j`` accepts the first ``cuts[j]`` trials (scores sorted descending, stable; ``j = 0`` is the
    +inf threshold, every later position the end of a tie group), as in :func:`nawsv.scoring.metrics.threshold_sweep`.
    Segment boundaries (``bounds``, sweep positions) are dense next to the point estimate's EER and minDCF
    thresholds and grow geometrically away from them, where resampled optima are rare.
    """

    def __init__(self, scores: np.ndarray, labels: np.ndarray, units: TrialUnits, p_targets: Sequence[float],
                 c_miss: float, c_fa: float) -> None:
        order = np.argsort(scores, kind="stable")[::-1]
        ordered = scores[order]
        self.num_units = len(units.names)
        self.labels = labels[order]
        self.enrol = units.enrol[order]
        self.test = np.where(units.test < 0, self.num_units, units.test)[order]    # the extra unit of weight 1
        ends = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))
        self.cuts = np.concatenate(([0], ends + 1))
        self.point = sorted_sweep(ordered, self.labels)          # the unweighted sweep: the point estimates
        self.targets = _LabelTrials.of(self.labels, self.enrol, self.test, self.num_units)
        self.nontargets = _LabelTrials.of(~self.labels, self.enrol, self.test, self.num_units)
        self.bounds = self._segment_bounds(self._point_optima(p_targets, c_miss, c_fa))
        self._class_matrix()

    def _point_optima(self, p_targets: Sequence[float], c_miss: float, c_fa: float) -> list[int]:
        """Sweep positions of the unweighted EER crossing and minDCF minima (where resamples concentrate)."""
        fnr, fpr = self.point.fnr, self.point.fpr
        anchors = [int(np.argmax(fnr - fpr <= 0.0))]
        anchors += [int(np.argmin(c_miss * p * fnr + c_fa * (1.0 - p) * fpr)) for p in p_targets]
        return anchors

    def _segment_bounds(self, anchors: Sequence[int]) -> np.ndarray:
        total = int(self.cuts[-1])
        steps, step = [0], float(SEGMENT_BASE)
        while steps[-1] < total:
            steps.append(steps[-1] + int(step))
            step *= SEGMENT_GROWTH
        offsets = np.array(steps)
        wanted = np.concatenate([self.cuts[a] + sign * offsets for a in anchors for sign in (-1, 1)])
        positions = np.searchsorted(self.cuts, np.clip(wanted, 0, total))
        return np.unique(np.concatenate(([0, self.cuts.size - 1], positions, anchors)))

    def _class_matrix(self) -> None:
        """How trial weights are summed per class (segment, label) for many resamples at once.

        Speaker units: a sparse product. Rows are the distinct (class, unit on one side) pairs and columns the
        unit on the other side, so ``(matrix @ weights) * weights[row unit]`` summed per class gives every class
        total, at a cost set by the distinct pairs, not the trials (speaker targets, whose other side is the unit
        of weight 1, give one row per class). Utterance units, where hardly a pair repeats, multiply the two
        sides' weights trial by trial instead (one byte per weight, trials grouped by class).
        """
        segment = np.searchsorted(self.cuts[self.bounds], np.arange(self.labels.size), side="right") - 1
        trial_class = 2 * segment + self.labels
        width = self.num_units + 1
        self.num_classes = 2 * (self.bounds.size - 1)
        choices = []
        for rows_side, cols_side in ((self.enrol, self.test), (self.test, self.enrol)):
            keys, row_of_trial = np.unique(trial_class * width + rows_side, return_inverse=True)
            choices.append((keys.size, keys, row_of_trial, cols_side))
        _, keys, row_of_trial, cols_side = min(choices, key=lambda choice: choice[0])
        self.by_trial = keys.size > BY_TRIAL_SHARE * self.labels.size
        if self.by_trial:
            order = np.argsort(trial_class, kind="stable")
            self.class_enrol, self.class_test = self.enrol[order], self.test[order]
            classes, starts = np.unique(trial_class[order], return_index=True)
            self.class_slices = list(zip(classes.tolist(), starts.tolist(), np.append(starts[1:], order.size).tolist()))
            return
        self.row_unit = keys % width
        self.per_class = sparse.csr_matrix((np.ones(keys.size), (keys // width, np.arange(keys.size))),
                                           shape=(self.num_classes, keys.size))
        self.matrix = sparse.csr_matrix((np.ones(row_of_trial.size), (row_of_trial, cols_side)),
                                        shape=(keys.size, width))
        self.matrix.sum_duplicates()
        self.max_row_sum = float(np.asarray(self.matrix.sum(axis=1)).max(initial=0.0))
        self.matrix32, self.per_class32 = self.matrix.astype(np.float32), self.per_class.astype(np.float32)

    def boundary_counts(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Accepted target and non-target weight at every segment bound, ``[bounds, resamples]`` each, for unit
        weights ``[units + 1, resamples]`` (float32 holding integers).

        Sums of non-negative integers are exact in float32 while they stay below 2**24 (a rounded partial sum
        would already be >= 2**24, and sums never decrease), so float32 results are kept when every product is
        bounded below 2**24 and every class total came out below it, and recomputed in float64 otherwise.
        """
        top = float(weights.max(initial=0.0))
        sums = None
        if self.by_trial:
            sums = self._sums_by_trial(weights, np.float32)
            if sums.max(initial=0.0) >= 2.0**24:
                sums = self._sums_by_trial(weights, np.float64)
        else:
            if self.max_row_sum * top**2 < 2.0**24:
                sums = self._sparse_sums(weights, self.matrix32, self.per_class32)
            if sums is None or sums.max(initial=0.0) >= 2.0**24:
                sums = self._sparse_sums(weights.astype(np.float64), self.matrix, self.per_class)
        sums = sums.astype(np.float64)
        zero = np.zeros((1, weights.shape[1]))
        return (np.concatenate((zero, np.cumsum(sums[1::2], axis=0))),
                np.concatenate((zero, np.cumsum(sums[0::2], axis=0))))

    def _sparse_sums(self, weights: np.ndarray, matrix: sparse.csr_matrix,
                     per_class: sparse.csr_matrix) -> np.ndarray:
        sums = np.empty((per_class.shape[0], weights.shape[1]), dtype=weights.dtype)
        for start in range(0, weights.shape[1], CLASS_SUM_COLUMNS):
            part = np.ascontiguousarray(weights[:, start:start + CLASS_SUM_COLUMNS])
            sums[:, start:start + part.shape[1]] = per_class @ ((matrix @ part) * part[self.row_unit])
        return sums

    def _sums_by_trial(self, weights: np.ndarray, dtype: type) -> np.ndarray:
        columns = weights.shape[1]
        if weights.max(initial=0.0) < 256:       # gather whole rows of one-byte weights: far less memory traffic
            table = np.ascontiguousarray(weights, dtype=np.uint8).view(np.dtype((np.void, columns))).reshape(-1)
            products = table[self.class_enrol].view(np.uint8).reshape(-1, columns).astype(dtype)
            products *= table[self.class_test].view(np.uint8).reshape(-1, columns)
        else:
            products = weights[self.class_enrol].astype(dtype) * weights[self.class_test]
        sums = np.zeros((self.num_classes, columns), dtype=dtype)
        for trial_class, start, stop in self.class_slices:
            sums[trial_class] = products[start:stop].sum(axis=0)
        return sums

    def segment_counts(self, weights: np.ndarray, columns: np.ndarray, segment: int, base_tar: np.ndarray,
                       base_non: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Accepted target and non-target weight at sweep positions ``bounds[segment] .. bounds[segment + 1]``
        for resamples ``columns`` of the unit weights, from their counts at the segment's first position."""
        first, last = self.bounds[segment], self.bounds[segment + 1]
        cuts = self.cuts[first:last + 1]
        return (base_tar + self._label_cumsum(weights, columns, cuts, self.targets),
                base_non + self._label_cumsum(weights, columns, cuts, self.nontargets))

    def _label_cumsum(self, weights: np.ndarray, columns: np.ndarray, cuts: np.ndarray,
                      trials: "_LabelTrials") -> np.ndarray:
        """Weight of one label's trials among the first ``cuts`` trials, minus that at ``cuts[0]``."""
        before = trials.before[cuts] - trials.before[cuts[0]]
        low, high = trials.before[cuts[0]], trials.before[cuts[-1]]
        enrol = weights[np.ix_(trials.enrol[low:high], columns)]
        trial_weights = enrol if trials.test is None else enrol * weights[np.ix_(trials.test[low:high], columns)]
        # float32 sums integers exactly below 2**24; the weights of a segment stay far below that
        exact32 = trial_weights.shape[0] * float(trial_weights.max(initial=0.0)) < 2.0**24
        running = np.zeros((high - low + 1, columns.size), dtype=np.float32 if exact32 else np.float64)
        np.cumsum(trial_weights, axis=0, out=running[1:])
        return running[before]


@dataclasses.dataclass(frozen=True)
class _LabelTrials:
    """The sorted trials of one label: how many precede each sorted position, and their unit indices (test None:
    all are the unit of weight 1, i.e. speaker-unit target trials)."""

    before: np.ndarray
    enrol: np.ndarray
    test: np.ndarray | None

    @classmethod
    def of(cls, mask: np.ndarray, enrol: np.ndarray, test: np.ndarray, one: int) -> "_LabelTrials":
        test = test[mask]
        return cls(np.concatenate(([0], np.cumsum(mask))), enrol[mask], None if np.all(test == one) else test)


def _segment_groups(segments: np.ndarray, sweep: _Sweep) -> Iterator[tuple[int, np.ndarray]]:
    """(segment, resample columns) for every segment some resample needs (-1: none), in pieces that keep the trial
    weights of a segment under MAX_BLOCK_ELEMENTS."""
    for segment in np.unique(segments):
        if segment < 0:
            continue
        columns = np.flatnonzero(segments == segment)
        length = max(1, int(sweep.cuts[sweep.bounds[segment + 1]] - sweep.cuts[sweep.bounds[segment]]))
        step = max(1, MAX_BLOCK_ELEMENTS // length)
        for start in range(0, columns.size, step):
            yield int(segment), columns[start:start + step]


def _rates(tar: np.ndarray, non: np.ndarray, num_tar: np.ndarray, num_non: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """FNR, FPR exactly as :func:`nawsv.scoring.metrics.threshold_sweep` computes them from integer counts."""
    return (num_tar - tar) / num_tar, non / num_non


def _eer_of(sweep: _Sweep, weights: np.ndarray, tar_b: np.ndarray, non_b: np.ndarray, num_tar: np.ndarray,
            num_non: np.ndarray, valid: np.ndarray, method: str) -> np.ndarray:
    """The EER of every resample: the segment where FNR - FPR (monotone) first drops to <= 0 is found from the
    bound counts, and only that segment is swept."""
    fnr_b, fpr_b = _rates(tar_b, non_b, num_tar, num_non)
    segments = np.where(valid, np.argmax(fnr_b - fpr_b <= 0.0, axis=0) - 1, -1)
    out = np.full(weights.shape[1], np.nan)
    for segment, columns in _segment_groups(segments, sweep):
        tar, non = sweep.segment_counts(weights, columns, segment, tar_b[segment, columns], non_b[segment, columns])
        fnr, fpr = _rates(tar, non, num_tar[columns], num_non[columns])
        gap = fnr - fpr
        right = np.argmax(gap <= 0.0, axis=0)                   # >= 1: the segment's first position has gap > 0
        picks = np.arange(columns.size)
        left = right - 1
        if method == "sweep":
            before = np.abs(gap[left, picks]) <= np.abs(gap[right, picks])     # ties: the higher threshold
            best = np.where(before, left, right)
            out[columns] = (fnr[best, picks] + fpr[best, picks]) / 2
        else:
            out[columns] = _interpolated(gap[left, picks], gap[right, picks], fpr[left, picks], fpr[right, picks])
    return out


def _interpolated(gap_left: np.ndarray, gap_right: np.ndarray, fpr_left: np.ndarray,
                  fpr_right: np.ndarray) -> np.ndarray:
    """:func:`nawsv.scoring.metrics._eer_roc_interp` on the two sweep points around the crossing."""
    exact = (gap_right == 0.0) | (fpr_right == fpr_left)
    share = gap_left / np.where(exact, 1.0, gap_left - gap_right)
    return np.where(exact, fpr_right, fpr_left + share * (fpr_right - fpr_left))


def _min_dcf_of(sweep: _Sweep, weights: np.ndarray, tar_b: np.ndarray, non_b: np.ndarray, num_tar: np.ndarray,
                num_non: np.ndarray, valid: np.ndarray, p: float, c_miss: float, c_fa: float) -> np.ndarray:
    """The minDCF of every resample. The minimum over the bounds is an upper bound; a segment can only hold a
    smaller (or an equal, earlier) cost if ``miss * FNR(its end) + fa * FPR(its start)`` does not exceed it, as
    FNR falls and FPR rises along the sweep (and float rounding is monotone, so the computed costs obey the same
    bound). Only such segments are swept."""
    miss, false_alarm = c_miss * p, c_fa * (1.0 - p)
    fnr_b, fpr_b = _rates(tar_b, non_b, num_tar, num_non)
    cost_b = miss * fnr_b + false_alarm * fpr_b
    best_index = np.argmin(cost_b, axis=0)
    columns_all = np.arange(weights.shape[1])
    best = cost_b[best_index, columns_all]
    best_position = sweep.bounds[best_index]
    floor = miss * fnr_b[1:] + false_alarm * fpr_b[:-1]
    pending = (np.diff(sweep.bounds) > 1)[:, None] & valid          # segments with positions between two bounds
    while True:
        pending &= floor <= best                    # a segment whose floor exceeds the best cost found is out
        if not pending.any():
            break
        # each resample sweeps its most promising segment first: the best cost drops and prunes the others
        next_segment = np.where(pending.any(axis=0), np.argmin(np.where(pending, floor, np.inf), axis=0), -1)
        chosen = next_segment >= 0
        pending[next_segment[chosen], columns_all[chosen]] = False
        for segment, columns in _segment_groups(next_segment, sweep):
            tar, non = sweep.segment_counts(weights, columns, segment, tar_b[segment, columns], non_b[segment, columns])
            fnr, fpr = _rates(tar, non, num_tar[columns], num_non[columns])
            cost = miss * fnr + false_alarm * fpr
            local = np.argmin(cost, axis=0)
            value = cost[local, np.arange(columns.size)]
            position = sweep.bounds[segment] + local
            better = (value < best[columns]) | ((value == best[columns]) & (position < best_position[columns]))
            best[columns] = np.where(better, value, best[columns])
            best_position[columns] = np.where(better, position, best_position[columns])
    return np.where(valid, best / min(miss, false_alarm), np.nan)


def _resample_metrics(sweep: _Sweep, weights: np.ndarray, p_targets: Sequence[float], c_miss: float, c_fa: float,
                      eer_method: str) -> tuple[np.ndarray, dict[float, np.ndarray], np.ndarray]:
    """EER, minDCF and the validity of every resample (columns of the unit weights ``[units + 1, resamples]``)."""
    tar_b, non_b = sweep.boundary_counts(weights)
    num_tar, num_non = tar_b[-1], non_b[-1]
    valid = (num_tar > 0) & (num_non > 0)
    num_tar, num_non = np.where(valid, num_tar, 1.0), np.where(valid, num_non, 1.0)
    eer = _eer_of(sweep, weights, tar_b, non_b, num_tar, num_non, valid, eer_method)
    dcf = {float(p): _min_dcf_of(sweep, weights, tar_b, non_b, num_tar, num_non, valid, float(p), c_miss, c_fa)
           for p in p_targets}
    return eer, dcf, valid


def bootstrap_metrics(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool], units: TrialUnits,
                      draws: Draws, p_targets: Sequence[float] = (0.01, 0.05), c_miss: float = 1.0,
                      c_fa: float = 1.0, source: str = "scores", eer_method: str = "sweep") -> Replicates:
    """EER (``eer_method``) and minDCF of the trials and of every resample in ``draws``: the point values are those
    of :func:`~nawsv.scoring.metrics.compute_metrics`, and each resample's those of that function on the trial
    list replicated by the resample's weights."""
    scores, labels = _validated(scores, labels, source)
    if units.enrol.shape != scores.shape:
        raise DataError(f"{source}: {scores.size} scores but {units.enrol.size} trials in the bootstrap units")
    if draws.num_units != len(units.names):
        raise DataError(f"{source}: the draws are of {draws.num_units} units, the trials have {len(units.names)}")
    sweep = _Sweep(scores, labels, units, p_targets, c_miss, c_fa)
    num_target = int(labels.sum())
    point = sweep_metrics(sweep.point, num_target, labels.size - num_target, p_targets, c_miss, c_fa, eer_method)
    eer_draws = np.empty(draws.resamples)
    dcf_draws = {float(p): np.empty(draws.resamples) for p in p_targets}
    dropped = 0
    chunk = max(1, min(draws.resamples, MAX_CHUNK_ELEMENTS // (draws.num_units + 1)))
    for start in range(0, draws.resamples, chunk):
        stop = min(start + chunk, draws.resamples)
        weights = np.empty((draws.num_units + 1, stop - start), dtype=np.float32)
        weights[:-1] = draws.rows(start, stop).T
        weights[-1] = 1.0
        part_eer, part_dcf, valid = _resample_metrics(sweep, weights, p_targets, c_miss, c_fa, eer_method)
        dropped += int((~valid).sum())
        eer_draws[start:stop] = part_eer
        for p in dcf_draws:
            dcf_draws[p][start:stop] = part_dcf[p]
    return Replicates(point.eer, dict(point.min_dcf), eer_draws, dcf_draws, dropped)


def trial_weights(units: TrialUnits, counts: np.ndarray) -> np.ndarray:
    """int64 ``[resamples, trials]``: how often each trial appears in each resample, for unit counts
    ``[resamples, units]`` as :meth:`Draws.rows` gives them."""
    counts = np.hstack([counts, np.ones((counts.shape[0], 1), dtype=counts.dtype)]).astype(np.int64)
    return counts[:, units.enrol] * counts[:, np.where(units.test < 0, len(units.names), units.test)]


def resample_statistic(statistic: Callable[[np.ndarray], np.ndarray], labels: np.ndarray | Sequence[bool],
                       units: TrialUnits, draws: Draws) -> tuple[np.ndarray, int]:
    """Any statistic of weighted trials on every resample, for metrics without a threshold sweep.

    ``statistic(weights)`` gets the int64 trial weights of a chunk of resamples (``[chunk, trials]``, see
    :func:`trial_weights`) and returns one value per row. Returns the values (NaN where a resample holds no
    target or no non-target trial) and the number of such dropped resamples, as :func:`bootstrap_metrics`.
    """
    labels = np.asarray(labels, dtype=bool)
    values = np.full(draws.resamples, np.nan)
    chunk = max(1, min(draws.resamples, MAX_CHUNK_ELEMENTS // max(labels.size, 1)))
    for start in range(0, draws.resamples, chunk):
        stop = min(start + chunk, draws.resamples)
        weights = trial_weights(units, draws.rows(start, stop))
        valid = (weights[:, labels].sum(axis=1) > 0) & (weights[:, ~labels].sum(axis=1) > 0)
        if valid.any():
            values[start:stop][valid] = np.asarray(statistic(weights[valid]), dtype=np.float64)
    return values, int(np.isnan(values).sum())


def percentile_interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of the valid (non-NaN) draws; NaN when fewer than
    MIN_KEPT_FRACTION of the draws are valid (the rest drew no target or no non-target trial, and what remains
    is a sample conditioned on that: too biased to report)."""
    valid = draws[np.isfinite(draws)]
    if valid.size == 0 or valid.size < MIN_KEPT_FRACTION * draws.size:
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
