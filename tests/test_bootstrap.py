"""Bootstrap intervals: weighted metrics against replicated trial lists, seeding, coverage, paired differences."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nawsv.scoring import bootstrap
from nawsv.scoring.bootstrap import (Draws, bootstrap_metrics, dropped_note, mean_draws, paired_difference,
                                     percentile_interval, trial_units)
from nawsv.scoring.config import BootstrapConfig
from nawsv.scoring.metrics import compute_metrics
from nawsv.utils.config import config_from_dict
from nawsv.utils.errors import ConfigError, DataError


def speaker_trials(rng: np.random.Generator, speakers: int, utts: int, nontargets: int):
    """Every within-speaker pair as a target trial, plus random cross-speaker non-target trials."""
    pairs, labels = [], []
    for s in range(speakers):
        for i in range(utts):
            for j in range(i + 1, utts):
                pairs.append((f"spk{s:03d}/u{i}", f"spk{s:03d}/u{j}"))
                labels.append(True)
    for _ in range(nontargets):
        s, t = rng.choice(speakers, size=2, replace=False)
        pairs.append((f"spk{s:03d}/u{rng.integers(utts)}", f"spk{t:03d}/u{rng.integers(utts)}"))
        labels.append(False)
    utt2spk = {key: key.split("/")[0] for pair in pairs for key in pair}
    return pairs, np.array(labels), utt2spk


def unit_weights(units, counts: np.ndarray) -> np.ndarray:
    """Per-trial multiplicity written out case by case (the definition in the module docstring)."""
    out = []
    for enrol, test in zip(units.enrol, units.test, strict=True):
        out.append(counts[enrol] if test < 0 else counts[enrol] * counts[test])
    return np.array(out, dtype=np.int64)


def brute_force_weighted(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray, p_targets, c_miss: float,
                         c_fa: float) -> tuple[float, dict[float, float]]:
    """Float64 sweep EER and minDCF of weighted trials, one threshold at a time (+inf, then every unique score)."""
    thresholds = np.concatenate(([np.inf], np.unique(scores)[::-1]))
    accepted = scores[None, :] >= thresholds[:, None]
    num_tar, num_non = int(weights[labels].sum()), int(weights[~labels].sum())
    misses = num_tar - (accepted * (weights * labels)).sum(axis=1)
    false_alarms = (accepted * (weights * ~labels)).sum(axis=1)
    fnr, fpr = misses / num_tar, false_alarms / num_non
    best = int(np.argmin(np.abs(fnr - fpr)))
    dcf = {p: float(np.min(c_miss * p * fnr + c_fa * (1 - p) * fpr)) / min(c_miss * p, c_fa * (1 - p))
           for p in p_targets}
    return float((fnr[best] + fpr[best]) / 2), dcf


@pytest.mark.parametrize("unit", ["speaker", "utterance"])
@pytest.mark.parametrize("ties, segment_base, by_trial", [(False, 32, 0.25), (True, 32, 0.25), (True, 2, 0.0),
                                                          (False, 1, np.inf)])
def test_each_resample_equals_a_brute_force_weighted_sweep(unit: str, ties: bool, segment_base: int,
                                                           by_trial: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Draw for draw and bit for bit, with odd costs and P_target up to 0.5; small segments make most resamples
    search several of them (the bounds that skip segments are what is tested), and both ways of summing
    weights per segment (sparse product, trial by trial) are used for both units."""
    monkeypatch.setattr(bootstrap, "SEGMENT_BASE", segment_base)
    monkeypatch.setattr(bootstrap, "BY_TRIAL_SHARE", by_trial)
    rng = np.random.default_rng(7 + segment_base)
    pairs, labels, utt2spk = speaker_trials(rng, speakers=9, utts=5, nontargets=500)
    scores = rng.normal(size=labels.size) + 1.2 * labels
    if ties:
        scores = np.round(scores, 1)
    p_targets, c_miss, c_fa = (0.001, 0.01, 0.3, 0.5), 3.7, 0.45
    units = trial_units(pairs, unit, utt2spk)
    draws = Draws(len(units.names), 30, seed=2)
    result = bootstrap_metrics(scores, labels, units, draws, p_targets, c_miss, c_fa)
    counts = draws.rows(0, 30)
    checked = 0
    for r in range(counts.shape[0]):
        weights = unit_weights(units, counts[r])
        if not weights[labels].any() or not weights[~labels].any():
            assert math.isnan(result.eer_draws[r]) and all(math.isnan(d[r]) for d in result.min_dcf_draws.values())
            continue
        eer, dcf = brute_force_weighted(scores, labels, weights, p_targets, c_miss, c_fa)
        assert result.eer_draws[r] == eer
        assert {p: result.min_dcf_draws[p][r] for p in p_targets} == dcf
        checked += 1
    assert checked >= 25 and result.dropped == counts.shape[0] - checked


@pytest.mark.parametrize("unit", ["speaker", "utterance"])
@pytest.mark.parametrize("eer_method", ["sweep", "roc_interp"])
def test_each_resample_equals_the_metrics_of_the_replicated_trial_list(unit: str, eer_method: str) -> None:
    """Against :func:`compute_metrics` on the trial list repeated by its weights, for both EER forms."""
    rng = np.random.default_rng(3)
    pairs, labels, utt2spk = speaker_trials(rng, speakers=7, utts=4, nontargets=80)
    scores = np.round(rng.normal(size=labels.size) + 1.5 * labels, 1)
    units = trial_units(pairs, unit, utt2spk)
    draws = Draws(len(units.names), 40, seed=5)
    result = bootstrap_metrics(scores, labels, units, draws, (0.01, 0.1, 0.5), eer_method=eer_method)
    point = compute_metrics(scores, labels, (0.01, 0.1, 0.5), eer_method=eer_method)
    assert result.eer == point.eer and result.min_dcf == point.min_dcf
    counts = draws.rows(0, 40)
    checked = 0
    for r in range(counts.shape[0]):
        weights = unit_weights(units, counts[r])
        kept_labels = np.repeat(labels, weights)
        if kept_labels.all() or not kept_labels.any():
            assert math.isnan(result.eer_draws[r])
            continue
        brute = compute_metrics(np.repeat(scores, weights), kept_labels, (0.01, 0.1, 0.5), eer_method=eer_method)
        assert result.eer_draws[r] == brute.eer
        assert {p: d[r] for p, d in result.min_dcf_draws.items()} == brute.min_dcf
        checked += 1
    assert checked >= 35


def test_draws_are_reproducible_with_a_seed_and_change_with_it() -> None:
    rng = np.random.default_rng(0)
    pairs, labels, utt2spk = speaker_trials(rng, speakers=20, utts=4, nontargets=300)
    scores = rng.normal(size=labels.size) + labels
    units = trial_units(pairs, "speaker", utt2spk)
    first = bootstrap_metrics(scores, labels, units, Draws(20, 200, seed=11))
    again = bootstrap_metrics(scores, labels, units, Draws(20, 200, seed=11))
    other = bootstrap_metrics(scores, labels, units, Draws(20, 200, seed=12))
    assert np.array_equal(first.eer_draws, again.eer_draws)
    assert percentile_interval(first.eer_draws, 0.95) == percentile_interval(again.eer_draws, 0.95)
    assert not np.array_equal(first.eer_draws, other.eer_draws)
    counts = Draws(20, 200, seed=11).rows(0, 200)
    assert counts.sum(axis=1).tolist() == [20] * 200          # each resample draws as many units as there are
    assert np.array_equal(Draws(20, 200, seed=11).rows(150, 200), counts[150:])   # rows do not depend on chunks


def test_speaker_units_weight_target_trials_once_per_copy() -> None:
    pairs = [("a/1", "a/2"), ("a/1", "b/1"), ("b/1", "b/2")]
    units = trial_units(pairs, "speaker", {"a/1": "a", "a/2": "a", "b/1": "b", "b/2": "b"})
    assert units.names == ["a", "b"] and units.enrol.tolist() == [0, 0, 1] and units.test.tolist() == [-1, 1, -1]
    assert unit_weights(units, np.array([3, 2])).tolist() == [3, 6, 2]
    utterances = trial_units(pairs, "utterance")
    assert utterances.names == ["a/1", "a/2", "b/1", "b/2"] and utterances.test.tolist() == [1, 2, 3]


def test_coverage_of_the_true_eer_is_close_to_nominal() -> None:
    """Speakers with random target and non-target offsets: trials of one speaker are correlated, and the
    population EER is known: targets ~ N(mu, 1 + sigma^2), non-targets ~ N(0, 1 + sigma^2)."""
    mu, sigma, speakers, datasets = 2.0, 0.6, 40, 400
    true_eer = 0.5 * math.erfc(mu / (2 * math.sqrt(1 + sigma**2)) / math.sqrt(2))
    rng = np.random.default_rng(2024)
    pairs, labels, utt2spk = speaker_trials(rng, speakers=speakers, utts=6, nontargets=1200)
    units = trial_units(pairs, "speaker", utt2spk)
    spk = np.array([int(a.split("/")[0][3:]) for a, _ in pairs])
    other = np.array([int(b.split("/")[0][3:]) for _, b in pairs])
    counts = Draws(speakers, 300, seed=1)
    covered = 0
    for _ in range(datasets):
        target_offset = rng.normal(0, sigma, speakers)
        impostor_offset = rng.normal(0, sigma, speakers)
        noise = rng.normal(size=labels.size)
        scores = np.where(labels, mu + target_offset[spk],
                          (impostor_offset[spk] + impostor_offset[other]) / math.sqrt(2)) + noise
        low, high = percentile_interval(bootstrap_metrics(scores, labels, units, counts).eer_draws, 0.95)
        covered += low <= true_eer <= high
    coverage = covered / datasets
    print(f"coverage of the true EER {true_eer:.4f} by 95 % speaker-bootstrap intervals: {coverage:.3f} "
          f"({datasets} data sets, 300 resamples)")
    assert 0.92 <= coverage <= 0.98


def test_paired_difference_of_a_system_with_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(1)
    pairs, labels, utt2spk = speaker_trials(rng, speakers=12, utts=6, nontargets=200)
    units = trial_units(pairs, "speaker", utt2spk)
    counts = Draws(12, 500, seed=0)
    system = bootstrap_metrics(rng.normal(size=labels.size) + labels, labels, units, counts)
    for metric in ("eer", "mindcf_0.01", "mindcf_0.05"):
        assert paired_difference([system], [system], metric, 0.95) == (0.0, 0.0, 0.0)


def test_paired_interval_is_narrower_than_the_unpaired_spread_for_correlated_systems() -> None:
    """Two systems sharing the speaker effects: pairing cancels them, so the difference is resolved."""
    rng = np.random.default_rng(4)
    pairs, labels, utt2spk = speaker_trials(rng, speakers=30, utts=6, nontargets=900)
    units = trial_units(pairs, "speaker", utt2spk)
    counts = Draws(30, 400, seed=0)
    base = rng.normal(size=labels.size) + 2.0 * labels
    a = bootstrap_metrics(base, labels, units, counts)
    b = bootstrap_metrics(base + 0.4 * labels + 0.1 * rng.normal(size=labels.size), labels, units, counts)
    diff, low, high = paired_difference([a], [b], "eer", 0.95)
    assert diff == b.eer - a.eer < 0 and low <= diff <= high and high < 0
    low_a, high_a = percentile_interval(a.eer_draws, 0.95)
    assert high - low < high_a - low_a


def test_mean_of_cells_uses_the_same_draws() -> None:
    rng = np.random.default_rng(5)
    pairs, labels, utt2spk = speaker_trials(rng, speakers=10, utts=4, nontargets=100)
    units = trial_units(pairs, "speaker", utt2spk)
    counts = Draws(10, 50, seed=0)
    cells = [bootstrap_metrics(rng.normal(size=labels.size) + k * labels, labels, units, counts) for k in (1, 2)]
    value, draws = mean_draws(cells, "eer")
    assert value == pytest.approx((cells[0].eer + cells[1].eer) / 2)
    assert np.allclose(draws, (cells[0].eer_draws + cells[1].eer_draws) / 2, equal_nan=True)


def test_bad_input_and_config_give_one_line_errors() -> None:
    with pytest.raises(DataError, match="utterance 'x/1' has no speaker in utt2spk"):
        trial_units([("x/1", "y/1")], "speaker", {"y/1": "y"})
    with pytest.raises(ConfigError, match="bootstrap.resamples must be 0"):
        config_from_dict(BootstrapConfig, {"resamples": 5})
    with pytest.raises(ConfigError, match="unit"):
        config_from_dict(BootstrapConfig, {"unit": "trial"})
    with pytest.raises(ConfigError, match="valid keys|unknown"):
        config_from_dict(BootstrapConfig, {"resample": 100})


def test_resamples_without_both_kinds_are_counted_and_too_many_leave_no_interval() -> None:
    """Six speakers, only one of them with target trials: every resample that misses it has no target."""
    rng = np.random.default_rng(8)
    pairs, labels, utt2spk = speaker_trials(rng, speakers=6, utts=5, nontargets=200)
    own = np.array([a.startswith("spk000") or not label for (a, _), label in zip(pairs, labels, strict=True)])
    pairs, labels = [p for p, keep in zip(pairs, own, strict=True) if keep], labels[own]
    units = trial_units(pairs, "speaker", utt2spk)
    draws = Draws(6, 300, seed=0)
    result = bootstrap_metrics(rng.normal(size=labels.size) + labels, labels, units, draws)
    missed = int((draws.rows(0, 300)[:, units.names.index("spk000")] == 0).sum())
    assert result.dropped == missed == int(np.isnan(result.eer_draws).sum()) > 0.1 * 300
    assert result.intervals(0.95) == {}
    note = dropped_note("tiny", result.dropped, 300)
    assert note.startswith("**No intervals:**") and f"{missed} of 300" in note


def test_dropped_share_sets_warning_and_interval_thresholds() -> None:
    draws = np.arange(1000, dtype=float)
    assert dropped_note("x", 10, 1000) is None                       # 1 %: no warning
    assert dropped_note("x", 11, 1000).startswith("**Warning:**")
    assert dropped_note("x", 100, 1000).startswith("**Warning:**")   # 90 % remain: still an interval
    assert dropped_note("x", 101, 1000).startswith("**No intervals:**")
    draws[:100] = np.nan
    assert percentile_interval(draws, 0.9) == pytest.approx((100 + 0.05 * 899, 100 + 0.95 * 899))
    draws[100] = np.nan
    assert all(math.isnan(bound) for bound in percentile_interval(draws, 0.9))


def test_stage_6_reports_dropped_resamples_and_leaves_out_the_intervals(tmp_path) -> None:
    """A trial list whose targets all belong to one of 6 speakers: about a third of the resamples miss it."""
    from nawsv.bin.score import main as score_main
    from nawsv.formats.kaldi import Trial, read_trials, write_trials
    from nawsv.scoring.results import read_results_tsv
    from nawsv.utils.cli import run_main
    from tests.test_score_stage import TEST_SET, make_experiment, score_args

    exp, data = make_experiment(tmp_path, seed=1)
    path = data / TEST_SET / "trials" / "tiny_O"
    trials = read_trials(path)
    keys = sorted({key for trial in trials for key in (trial.enrol, trial.test)})
    first = [key for key in keys if key.startswith(keys[0].split("/")[0] + "/")]
    targets = [Trial(a, b, True) for i, a in enumerate(first) for b in first[i + 1:]]
    write_trials(path, targets + [trial for trial in trials if not trial.target])
    assert run_main(score_main, score_args(exp, data, "--override", "bootstrap.resamples=100",
                                           "--override", "methods=[cosine]")) == 0
    rows = read_results_tsv(exp / "results.tsv")
    dropped = rows[0].resamples_dropped
    assert 10 < dropped < 100 and all(row.resamples_dropped == dropped and not row.intervals for row in rows)
    md = (exp / "results.md").read_text()
    assert f"**No intervals:** trial list tiny_O: {dropped} of 100 bootstrap resamples" in md
    assert not [line for line in md.splitlines() if line.startswith("|") and "[" in line]


@pytest.mark.parametrize("unit", ["speaker", "utterance"])
def test_a_generic_statistic_sees_the_weights_of_each_resample(unit: str) -> None:
    rng = np.random.default_rng(9)
    pairs, labels, utt2spk = speaker_trials(rng, speakers=5, utts=4, nontargets=60)
    scores = rng.normal(size=labels.size) + labels
    units = trial_units(pairs, unit, utt2spk)
    draws = Draws(len(units.names), 50, seed=3)
    values, dropped = bootstrap.resample_statistic(lambda w: (w * scores).sum(axis=1) / w.sum(axis=1), labels,
                                                   units, draws)
    reference = bootstrap_metrics(scores, labels, units, draws)
    assert dropped == reference.dropped and np.array_equal(np.isnan(values), np.isnan(reference.eer_draws))
    counts = draws.rows(0, 50)
    for r in np.flatnonzero(~np.isnan(values)):
        weights = unit_weights(units, counts[r])
        assert values[r] == pytest.approx(np.repeat(scores, weights).mean(), rel=1e-12)
