"""Calibration metrics, the logistic-regression calibrator, the SNR estimator and the QMF features."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nawsv.data.augment import mix_at_snr
from nawsv.scoring.asnorm import Cohort
from nawsv.scoring.bootstrap import Draws, resample_statistic, trial_units
from nawsv.scoring.calibration_metrics import act_dcf, bayes_threshold, cllr, min_cllr, optimal_llr
from nawsv.scoring.calibrator import fit_calibrator, load_calibrators, save_calibrators
from nawsv.scoring.metrics import compute_min_dcf
from nawsv.scoring.quality import UtteranceQuality, impostor_statistics, trial_features, variant_features
from nawsv.scoring.snr import estimate_snr


def gaussian_trials(seed: int, num_tar: int, num_non: int, mu_tar: float = 2.0, mu_non: float = -1.0,
                    sigma: float = 1.5) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Scores with equal-variance Gaussian classes, and the slope and offset of their true LLR."""
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(mu_tar, sigma, num_tar), rng.normal(mu_non, sigma, num_non)])
    labels = np.concatenate([np.ones(num_tar, bool), np.zeros(num_non, bool)])
    slope = (mu_tar - mu_non) / sigma ** 2
    offset = (mu_non ** 2 - mu_tar ** 2) / (2 * sigma ** 2)
    return scores, labels, slope, offset


def brute_cllr(llr, labels) -> float:
    tar = [math.log2(1 + math.exp(-x)) for x, y in zip(llr, labels) if y]
    non = [math.log2(1 + math.exp(x)) for x, y in zip(llr, labels) if not y]
    return 0.5 * (sum(tar) / len(tar) + sum(non) / len(non))


def test_cllr_matches_brute_force_and_the_reference_points():
    rng = np.random.default_rng(0)
    llr, labels = rng.normal(0, 3, 200), rng.random(200) < 0.3
    assert cllr(llr, labels) == pytest.approx(brute_cllr(llr, labels), rel=1e-12)
    assert cllr(np.zeros(10), np.arange(10) < 4) == pytest.approx(1.0)      # uninformative: exactly 1 bit


def test_cllr_of_perfectly_calibrated_binary_scores_is_the_binary_entropy():
    """A score that is +L for a fraction q of targets (and 1 - q of non-targets), -L otherwise, with
    L = log(q / (1 - q)), is a perfectly calibrated LLR; its Cllr is the entropy H(q) in bits."""
    q = 0.8
    big = math.log(q / (1 - q))
    labels = np.array([True] * 10 + [False] * 10)
    llr = np.array([big] * 8 + [-big] * 2 + [big] * 2 + [-big] * 8)
    entropy = -q * math.log2(q) - (1 - q) * math.log2(1 - q)
    assert cllr(llr, labels) == pytest.approx(entropy, rel=1e-12)
    assert min_cllr(llr, labels) == pytest.approx(entropy, rel=1e-12)     # already optimal: PAV changes nothing


def test_cllr_of_calibrated_gaussian_llrs_matches_its_integral():
    """Equal-variance Gaussian LLRs with separation d are N(+-d^2/2, d^2), so Cllr = E log2(1 + e^-L) with
    L ~ N(d^2/2, d^2) (a one-dimensional integral, evaluated on a fine grid)."""
    scores, labels, slope, offset = gaussian_trials(1, 40000, 40000)
    d2 = slope ** 2 * 1.5 ** 2
    grid = np.linspace(-12, 12, 20001)
    density = np.exp(-0.5 * grid ** 2) / math.sqrt(2 * math.pi)
    expected = float(np.trapezoid(density * np.log2(1 + np.exp(-(d2 / 2 + math.sqrt(d2) * grid))), grid))
    measured = cllr(slope * scores + offset, labels)
    # Monte-Carlo error of a mean of 80,000 bounded terms with sd < 1.5 bits: about 0.005; allow 3x
    assert measured == pytest.approx(expected, abs=0.015)
    assert min_cllr(scores, labels) <= measured


def naive_pav(y: list[float]) -> list[float]:
    """Isotonic regression by repeatedly merging the first violating pair of blocks (independent of nawsv's)."""
    blocks = [[v] for v in y]
    changed = True
    while changed:
        changed = False
        for i in range(len(blocks) - 1):
            if sum(blocks[i]) / len(blocks[i]) > sum(blocks[i + 1]) / len(blocks[i + 1]):
                blocks[i:i + 2] = [blocks[i] + blocks[i + 1]]
                changed = True
                break
    return [sum(b) / len(b) for b in blocks for _ in b]


def test_min_cllr_matches_an_independent_pav():
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(0, 1, 300), 1)              # ties, pooled by both implementations
    labels = rng.random(300) < 1 / (1 + np.exp(-2 * scores))
    order = np.argsort(scores, kind="stable")
    # pool ties first (a re-mapping must be a function of the score), then the naive PAV
    unique, group = np.unique(scores, return_inverse=True)
    expanded = []
    for g in range(unique.size):
        members = labels[group == g]
        expanded += [members.mean()] * members.size
    posterior = naive_pav(expanded)
    sorted_labels = labels[order]
    prior = math.log(labels.sum() / (~labels).sum())
    tar, non = [], []
    for p, y in zip(posterior, sorted_labels):
        llr = (math.log(p / (1 - p)) if 0 < p < 1 else math.copysign(math.inf, p - 0.5)) - prior
        if y:
            tar.append(0.0 if llr == math.inf else math.log2(1 + math.exp(-llr)))
        else:
            non.append(0.0 if llr == -math.inf else math.log2(1 + math.exp(llr)))
    expected = 0.5 * (sum(tar) / len(tar) + sum(non) / len(non))
    assert min_cllr(scores, labels) == pytest.approx(expected, rel=1e-10)
    remapped = optimal_llr(scores, labels)[order]
    assert np.all(remapped[1:] >= remapped[:-1])                         # monotone in the score


def test_act_dcf_matches_brute_force_at_the_bayes_threshold():
    rng = np.random.default_rng(4)
    llr, labels = rng.normal(0, 4, 500), rng.random(500) < 0.2
    for p, c_miss, c_fa in [(0.01, 1, 1), (0.05, 1, 1), (0.3, 2, 1)]:
        theta = math.log(c_fa * (1 - p) / (c_miss * p))
        assert bayes_threshold(p, c_miss, c_fa) == pytest.approx(theta)
        misses = sum(1 for x, y in zip(llr, labels) if y and x < theta) / labels.sum()
        false_alarms = sum(1 for x, y in zip(llr, labels) if not y and x >= theta) / (~labels).sum()
        expected = (c_miss * p * misses + c_fa * (1 - p) * false_alarms) / min(c_miss * p, c_fa * (1 - p))
        assert act_dcf(llr, labels, p, c_miss, c_fa) == pytest.approx(expected, rel=1e-12)
        assert act_dcf(llr, labels, p, c_miss, c_fa) >= compute_min_dcf(llr, labels, p, c_miss, c_fa)[0] - 1e-12


@pytest.mark.parametrize("num_non", [4000, 40000])
def test_calibrator_recovers_the_true_llr_whatever_the_class_sizes(num_non):
    """With the effective prior equal to the empirical target share, the weighted fit is plain maximum
    likelihood, so its standard errors come from the inverse Fisher information; the fit must land within
    4 of them (a 6e-5 chance per parameter of failing under the model; the seed is fixed). With 10x more
    non-targets and p_fit = 0.5 the weighting must still give the same LLR."""
    scores, labels, slope, offset = gaussian_trials(5, 4000, num_non)
    share = labels.mean()
    calibrator = fit_calibrator(scores, labels, p_fit=0.5 if num_non > 4000 else share)
    design = np.stack([scores, np.ones_like(scores)], axis=1)
    llr = slope * scores + offset + math.log(share / (1 - share))
    prob = 1 / (1 + np.exp(-llr))
    fisher = (design * (prob * (1 - prob))[:, None]).T @ design
    std_error = np.sqrt(np.diag(np.linalg.inv(fisher)))
    tolerance = 4 * std_error * (1.5 if num_non > 4000 else 1.0)   # prior-weighting inflates the variance a bit
    assert calibrator.weights[0] == pytest.approx(slope, abs=tolerance[0])
    assert calibrator.bias == pytest.approx(offset, abs=tolerance[1])
    assert cllr(calibrator.llr(scores), labels) <= cllr(slope * scores + offset, labels) + 1e-3


def test_calibrator_fits_several_features_and_round_trips(tmp_path):
    rng = np.random.default_rng(6)
    n = 6000
    labels = rng.random(n) < 0.3
    quality = rng.uniform(0, 1, n)
    # the score's separation grows with the quality; the true LLR is linear in (score, score*quality, quality)
    scores = np.where(labels, 1.0, -1.0) + rng.normal(0, 1, n)
    features = np.stack([scores, quality], axis=1)
    calibrator = fit_calibrator(features, labels, 0.3, names=("score", "q"), variant="qmf")
    assert calibrator.weights[0] == pytest.approx(2.0, abs=0.2)          # true LLR slope 2, offset 0, no q
    assert calibrator.weights[1] == pytest.approx(0.0, abs=0.3)
    path = tmp_path / "calibrators.json"
    save_calibrators(path, {"cosine": {"qmf": calibrator}}, {"seed": 1})
    loaded, info = load_calibrators(path)
    assert loaded["cosine"]["qmf"] == calibrator and info == {"seed": 1}
    assert np.allclose(loaded["cosine"]["qmf"].llr(features), calibrator.llr(features))


def test_snr_estimate_of_speech_like_audio_with_pauses_in_white_noise():
    rng = np.random.default_rng(7)
    rate = 16000
    t = np.arange(4 * rate) / rate
    active = (np.floor(t / 0.4) % 2 == 0)                           # 400-ms bursts and pauses
    speech = active * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    for snr in (0, 5, 10, 20):
        noisy, _ = mix_at_snr(speech, rng.normal(0, 1, t.size), snr)
        # frame powers of white noise fluctuate by ~7 %; the quietest tenth averages ~8 % low: +0.4 dB
        assert estimate_snr(noisy, rate) == pytest.approx(snr, abs=1.0)
    assert estimate_snr(speech, rate) == 60.0                       # digital silence in the pauses


def test_qmf_features_by_hand():
    quality = UtteranceQuality(duration={"a": 2.0, "b": 8.0}, impostor_mean={"a": 0.1, "b": 0.3},
                               snr={"a": 5.0, "b": 15.0})
    names = variant_features("qmf_snr", with_asnorm=True)
    assert names == ("score", "log_dur_enrol", "log_dur_test", "imp_mean_enrol", "imp_mean_test", "snr_enrol",
                     "snr_test")
    got = trial_features(names, np.array([0.7, -0.2]), [("a", "b"), ("b", "a")], quality)
    expected = [[0.7, math.log(2), math.log(8), 0.1, 0.3, 5.0, 15.0],
                [-0.2, math.log(8), math.log(2), 0.3, 0.1, 15.0, 5.0]]
    assert np.allclose(got, expected)
    assert variant_features("qmf", with_asnorm=False) == ("score", "log_dur_enrol", "log_dur_test")


def test_impostor_means_leave_out_the_own_speaker():
    cohort = Cohort(["s1", "s2", "s3"], np.eye(3))
    directions = np.array([[0.8, 0.6, 0.0], [0.0, 0.6, 0.8]])
    stats = impostor_statistics(directions, ["u1", "u2"], cohort, 2, {"u1": "s1", "u2": "x"})
    assert stats.mean == pytest.approx([(0.6 + 0.0) / 2, (0.8 + 0.6) / 2])   # u1 without s1; u2: top 2 of all


def test_resampled_statistics_weight_trials_like_the_bootstrap():
    pairs = [("a", "b"), ("a", "c"), ("b", "c"), ("c", "a")]
    units = trial_units(pairs, "utterance")
    draws = Draws(len(units.names), 30, seed=2)
    llr = np.array([1.0, -2.0, 0.5, 3.0])
    labels = np.array([True, False, True, False])
    values, dropped = resample_statistic(lambda w: cllr(llr, labels, w), labels, units, draws)
    counts = draws.rows(0, 30)
    for r in range(30):
        m = dict(zip(units.names, counts[r]))
        repeated = [(x, y) for (e, t), x, y in zip(pairs, llr, labels) for _ in range(m[e] * m[t])]
        if {y for _, y in repeated} == {True, False}:
            assert values[r] == pytest.approx(brute_cllr(*zip(*repeated)))
        else:
            assert math.isnan(values[r])
    assert dropped == int(np.isnan(values).sum())
