"""EER, minDCF and DET points against a brute-force threshold sweep written as plain Python loops."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nawsv.scoring.metrics import compute_eer, compute_metrics, compute_min_dcf, det_curve
from nawsv.utils.errors import DataError, NawsvError


def brute_force(scores: list[float], labels: list[bool], p_targets=(0.01, 0.05), c_miss=1.0, c_fa=1.0):
    """Try every candidate threshold (+inf and each distinct score, high to low) with the stated rules."""
    candidates = [math.inf] + sorted(set(scores), reverse=True)
    n_tar = sum(labels)
    n_non = len(labels) - n_tar
    points = []
    for threshold in candidates:
        misses = sum(1 for s, y in zip(scores, labels) if y and not s >= threshold)
        false_alarms = sum(1 for s, y in zip(scores, labels) if not y and s >= threshold)
        points.append((threshold, misses / n_tar, false_alarms / n_non))
    best = None
    for threshold, fnr, fpr in points:
        if best is None or abs(fnr - fpr) < best[0]:
            best = (abs(fnr - fpr), (fnr + fpr) / 2, threshold)
    dcfs = {}
    for p in p_targets:
        norm = min(c_miss * p, c_fa * (1 - p))
        lowest = None
        for threshold, fnr, fpr in points:
            cost = (c_miss * p * fnr + c_fa * (1 - p) * fpr) / norm
            if lowest is None or cost < lowest[0]:
                lowest = (cost, threshold)
        dcfs[p] = lowest
    return best[1], best[2], dcfs, points


def random_case(rng: np.random.Generator, size: int, ties: bool):
    labels = rng.random(size) < rng.uniform(0.1, 0.9)
    labels[0], labels[-1] = True, False          # both classes present
    scores = rng.normal(labels * rng.uniform(0, 2), 1.0)
    if ties:
        scores = np.round(scores * 2) / 2        # a handful of distinct values, many ties across classes
    return scores.tolist(), labels.tolist()


@pytest.mark.parametrize("seed", range(40))
def test_metrics_equal_brute_force_sweep(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 60))
    scores, labels = random_case(rng, size, ties=seed % 2 == 0)
    eer, eer_threshold, dcfs, _ = brute_force(scores, labels, (0.01, 0.05, 0.3))
    metrics = compute_metrics(scores, labels, (0.01, 0.05, 0.3))
    assert metrics.eer == eer and metrics.eer_threshold == eer_threshold
    for p, (cost, threshold) in dcfs.items():
        assert metrics.min_dcf[p] == pytest.approx(cost, rel=1e-12, abs=1e-15)
        assert metrics.min_dcf_threshold[p] == threshold
    assert compute_eer(scores, labels) == (eer, eer_threshold)
    assert compute_min_dcf(scores, labels, 0.05)[0] == pytest.approx(dcfs[0.05][0], rel=1e-12)


def test_unequal_costs_match_brute_force() -> None:
    scores, labels = random_case(np.random.default_rng(3), 80, ties=True)
    _, _, dcfs, _ = brute_force(scores, labels, (0.2,), c_miss=10.0, c_fa=1.0)
    value, threshold = compute_min_dcf(scores, labels, 0.2, c_miss=10.0, c_fa=1.0)
    assert value == pytest.approx(dcfs[0.2][0], rel=1e-12) and threshold == dcfs[0.2][1]


def test_det_curve_points_equal_brute_force() -> None:
    scores, labels = random_case(np.random.default_rng(11), 50, ties=True)
    *_, points = brute_force(scores, labels)
    fpr, fnr, thresholds = det_curve(scores, labels)
    assert thresholds.tolist() == [p[0] for p in points]
    assert fnr.tolist() == [p[1] for p in points]
    assert fpr.tolist() == [p[2] for p in points]


def test_tiny_lists_by_hand() -> None:
    # separable: threshold 0.9 accepts the target only
    assert compute_eer([0.9, 0.1], [True, False]) == (0.0, 0.9)
    assert compute_min_dcf([0.9, 0.1], [True, False], 0.01) == (0.0, 0.9)
    # reversed: +inf (FNR 1, FPR 0), 0.9 (FNR 1, FPR 1), 0.1 (FNR 0, FPR 1): |FNR - FPR| is 0 only at 0.9
    assert compute_eer([0.1, 0.9], [True, False]) == (1.0, 0.9)
    # a tie between a target and a non-target: both are accepted or rejected together
    fpr, fnr, thresholds = det_curve([0.5, 0.5], [True, False])
    assert thresholds.tolist() == [math.inf, 0.5] and fnr.tolist() == [1.0, 0.0] and fpr.tolist() == [0.0, 1.0]
    assert compute_eer([0.5, 0.5], [True, False])[0] == 0.5
    # minDCF at p=0.01 rejects everything (cost 1.0 after normalisation) rather than accepting a false alarm
    assert compute_min_dcf([0.1, 0.9], [True, False], 0.01) == (1.0, math.inf)


def test_labels_as_integers_and_large_list_consistency() -> None:
    rng = np.random.default_rng(5)
    labels = rng.random(5000) < 0.3
    scores = rng.normal(labels * 1.5, 1.0).astype(np.float32)
    a = compute_metrics(scores, labels)
    b = compute_metrics(scores.astype(np.float64), labels.astype(int))
    assert a == b
    assert 0.1 < a.eer < 0.3 and a.num_target == int(labels.sum()) and a.num_nontarget == 5000 - labels.sum()


@pytest.mark.parametrize("scores, labels, message", [
    ([0.1, 0.2], [True, True], "no non-target"),
    ([0.1, 0.2], [False, False], "no target"),
    ([0.1, 0.2, 0.3], [True, False], "3 scores but 2 labels"),
    ([0.1, float("nan")], [True, False], "NaN or infinite"),
    ([0.1, float("inf")], [True, False], "NaN or infinite"),
    ([0.1, 0.2], [2, 0], "0/1"),
])
def test_bad_input_is_a_user_error(scores, labels, message) -> None:
    with pytest.raises(DataError, match=message) as info:
        compute_metrics(scores, labels)
    assert isinstance(info.value, NawsvError)


def test_p_target_out_of_range() -> None:
    with pytest.raises(DataError, match="p_target"):
        compute_min_dcf([0.1, 0.9], [True, False], 1.0)
