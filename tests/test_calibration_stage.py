"""The calibration step and calibrated metrics in stage 6, on the small synthetic experiment of the score tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nawsv.bin.calibrate import main as calibrate_main
from nawsv.bin.score import main as score_main
from nawsv.formats.kaldi import read_table, read_trials, write_table
from nawsv.scoring.calibration_metrics import act_dcf, cllr, min_cllr
from nawsv.scoring.calibrator import load_calibrators
from nawsv.scoring.score_files import read_scores
from nawsv.scoring.synthetic import corrupted, speaker_structured_set, write_embedding_set, write_utt2spk
from nawsv.utils.errors import DataError
from tests.test_score_stage import NOISY, TEST_SET, TOP_N, make_experiment, read_tsv

CALIB = "tiny_train_calib"


def make_calibrated_experiment(root: Path) -> tuple[Path, Path]:
    """The score tests' experiment plus a calibration set (clean and noise_0, other speakers than the test's)
    and quality tables (durations; SNRs that track the corruption) of every set."""
    exp, data = make_experiment(root)
    rng = np.random.default_rng(9)
    calib = speaker_structured_set(rng, num_speakers=8, utts_per_speaker=4, dim=12, within=1.1, segments=5,
                                   first_speaker=30000)
    sets = {CALIB: calib, f"{CALIB}_noise_0": corrupted(rng, calib, 1.6)}
    for name, data_set in sets.items():
        write_embedding_set(exp / "embeddings" / name, data_set)
    write_utt2spk(data / CALIB, calib)
    keys = {CALIB: calib.keys, f"{CALIB}_noise_0": calib.keys}
    test_keys = read_table(data / TEST_SET / "utt2spk")
    keys.update({TEST_SET: list(test_keys)}, **{f"{TEST_SET}_{c}": list(test_keys) for c in NOISY})
    for name, utts in keys.items():
        noisy = "noise" in name or "music" in name
        write_table(exp / "quality" / name / "utt2dur", {u: f"{rng.uniform(2, 6):.3f}" for u in utts})
        write_table(exp / "quality" / name / "utt2snr",
                    {u: f"{rng.normal(3 if noisy else 30, 2):.3f}" for u in utts})
    return exp, data


def calibrate_args(exp: Path, data: Path, *extra: str) -> list[str]:
    overrides = [arg for item in (f"asnorm_top_n={TOP_N}", *extra) for arg in ("--override", item)]
    return ["--exp_dir", str(exp), "--data_dir", str(data), "--calib_set", CALIB, "--test_set", TEST_SET,
            "--cohort_set", "tiny_train", *overrides]


def test_calibration_step_fits_every_method_and_variant_on_training_speakers_only(tmp_path: Path) -> None:
    exp, data = make_calibrated_experiment(tmp_path)
    assert calibrate_main(calibrate_args(exp, data, "calibration.max_nontarget_trials=200")) == 0
    calibrators, info = load_calibrators(exp / "calibration" / "calibrators.json")
    assert sorted(calibrators) == ["asnorm", "cosine", "full", "segment"]
    assert all(sorted(v) == ["qmf", "qmf_snr", "score"] for v in calibrators.values())
    assert calibrators["asnorm"]["qmf"].features == ("score", "log_dur_enrol", "log_dur_test", "imp_mean_enrol",
                                                      "imp_mean_test")
    assert info["conditions"] == ["clean", "noise_0"]
    trials = read_trials(exp / "calibration" / "trials")
    calib_spk = read_table(data / CALIB / "utt2spk")
    test_speakers = set(read_table(data / TEST_SET / "utt2spk").values())
    used = {calib_spk[k] for t in trials for k in (t.enrol, t.test)}
    assert used and not used & test_speakers
    assert sum(t.target for t in trials) == 8 * 6 and sum(not t.target for t in trials) == 200   # all C(4,2) pairs
    assert all(t.target == (calib_spk[t.enrol] == calib_spk[t.test]) for t in trials)
    manifest = (exp / "calibration" / "manifest.tsv").read_text().splitlines()
    assert manifest[1].split("\t") == ["clean", CALIB, "48", "200", "0"]
    # a rerun with the same seed draws the same trials
    first = (exp / "calibration" / "trials").read_text()
    assert calibrate_main(calibrate_args(exp, data, "calibration.max_nontarget_trials=200")) == 0
    assert (exp / "calibration" / "trials").read_text() == first


def test_calibration_refuses_a_test_speaker(tmp_path: Path) -> None:
    exp, data = make_calibrated_experiment(tmp_path)
    utt2spk = read_table(data / CALIB / "utt2spk")
    test_speaker = next(iter(read_table(data / TEST_SET / "utt2spk").values()))
    first = sorted(utt2spk)[0]
    write_table(data / CALIB / "utt2spk", {**utt2spk, first: test_speaker})
    with pytest.raises(DataError, match="also speakers of"):
        calibrate_main(calibrate_args(exp, data))
    assert not (exp / "calibration" / "calibrators.json").exists()


def test_stage6_reports_calibrated_metrics_that_match_an_independent_computation(tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture) -> None:
    exp, data = make_calibrated_experiment(tmp_path)
    calibrate_main(calibrate_args(exp, data, "calibration.max_nontarget_trials=300"))
    args = ["--exp_dir", str(exp), "--data_dir", str(data), "--test_set", TEST_SET, "--cohort_set", "tiny_train",
            "--override", f"asnorm_top_n={TOP_N}", "--override", "bootstrap.resamples=50"]
    assert score_main(args) == 0
    printed = capsys.readouterr().out
    assert "## Calibration" in printed and "actDCF(0.01)" in printed and "minDCF(0.01)" in printed
    rows = read_tsv(exp / "calibration.tsv")
    assert len(rows) == 3 * 4 * 3                      # conditions x methods x variants
    row = next(r for r in rows if r["condition"] == "noise_0" and r["method"] == "cosine" and r["variant"] == "qmf_snr")
    calibrator = load_calibrators(exp / "calibration" / "calibrators.json")[0]["cosine"]["qmf_snr"]
    trials = read_trials(data / TEST_SET / "trials" / "tiny_O")
    _, score_values, _ = read_scores(exp / "scores" / "tiny_O_noise_0_cosine.score")   # written with 6 decimals
    dur = read_table(exp / "quality" / f"{TEST_SET}_noise_0" / "utt2dur")
    snr = read_table(exp / "quality" / f"{TEST_SET}_noise_0" / "utt2snr")
    w, b = calibrator.weights, calibrator.bias
    llr = np.array([w[0] * s + w[1] * np.log(float(dur[t.enrol])) + w[2] * np.log(float(dur[t.test]))
                    + w[3] * float(snr[t.enrol]) + w[4] * float(snr[t.test]) + b for s, t in zip(score_values, trials)])
    labels = np.array([t.target for t in trials])
    assert float(row["cllr"]) == pytest.approx(cllr(llr, labels), abs=1e-4)
    assert float(row["min_cllr"]) == pytest.approx(min_cllr(score_values, labels), abs=1e-4)
    assert float(row["actdcf_0.01"]) == pytest.approx(act_dcf(llr, labels, 0.01), abs=1e-6)
    result = next(r for r in read_tsv(exp / "results.tsv") if r["condition"] == "noise_0" and r["method"] == "cosine")
    assert float(row["loss_0.05"]) == pytest.approx(float(row["actdcf_0.05"]) - float(result["mindcf_0.05"]), abs=2e-6)
    assert float(row["cllr_low"]) <= float(row["cllr"]) <= float(row["cllr_high"])


def test_stage6_without_calibrators_says_so_and_writes_no_calibration_table(tmp_path: Path) -> None:
    exp, data = make_experiment(tmp_path)
    args = ["--exp_dir", str(exp), "--data_dir", str(data), "--test_set", TEST_SET, "--cohort_set", "tiny_train",
            "--override", f"asnorm_top_n={TOP_N}", "--override", "bootstrap.resamples=0"]
    assert score_main(args) == 0
    assert not (exp / "calibration.tsv").exists()
    assert "## Calibration" not in (exp / "results.md").read_text()
