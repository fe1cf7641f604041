"""Stage 6 end to end: the CLI on a small experiment (clean + 2 noisy conditions + cohort), checked against an
independent computation from kaldiio-loaded embeddings and brute-force metrics."""
from __future__ import annotations

import itertools
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import yaml

from nawsv.bin.score import main as score_main
from nawsv.formats.kaldi import read_trials, write_trials
from nawsv.scoring.synthetic import corrupted, random_trials, speaker_structured_set, write_embedding_set, write_utt2spk
from nawsv.utils.cli import run_main
from tests.conftest import run_module
from tests.test_asnorm import naive_asnorm
from tests.test_metrics import brute_force

TEST_SET = "tiny_test"
NOISY = {"noise_0": 1.6, "music_0": 1.0}
TOP_N = 6


def make_experiment(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """``root/exp`` with clean, two noisy and a cohort embedding set; ``root/data`` with trials and utt2spk."""
    rng = np.random.default_rng(seed)
    test = speaker_structured_set(rng, num_speakers=6, utts_per_speaker=5, dim=12, within=1.1, segments=5)
    cohort = speaker_structured_set(rng, num_speakers=10, utts_per_speaker=3, dim=12, first_speaker=20000)
    exp, data = root / "exp", root / "data"
    write_embedding_set(exp / "embeddings" / TEST_SET, test)
    for name, strength in NOISY.items():
        write_embedding_set(exp / "embeddings" / f"{TEST_SET}_{name}", corrupted(rng, test, strength))
    write_embedding_set(exp / "embeddings" / "tiny_train", cohort)
    write_utt2spk(data / "tiny_train", cohort)
    write_utt2spk(data / TEST_SET, test)
    write_trials(data / TEST_SET / "trials" / "tiny_O", random_trials(rng, test, 5, 120))
    return exp, data


def score_args(exp: Path, data: Path, *extra: str) -> list[str]:
    return ["--exp_dir", str(exp), "--data_dir", str(data), "--test_set", TEST_SET, "--cohort_set", "tiny_train",
            "--override", f"asnorm_top_n={TOP_N}", *extra]


def independent_scores(exp: Path, data: Path, set_name: str) -> dict[str, list[float]]:
    """Every method's scores for tiny_O, from kaldiio reads and explicit loops."""
    vectors = kaldiio.load_scp(str(exp / "embeddings" / set_name / "xvector.scp"))
    segments = kaldiio.load_scp(str(exp / "embeddings" / set_name / "xvector_seg.scp"))
    train = kaldiio.load_scp(str(exp / "embeddings" / "tiny_train" / "xvector.scp"))
    utt2spk = dict(line.split() for line in (data / "tiny_train" / "utt2spk").read_text().splitlines())
    by_speaker: dict[str, list[np.ndarray]] = {}
    for key, vector in train.items():
        by_speaker.setdefault(utt2spk[key], []).append(vector / np.linalg.norm(vector))
    cohort = np.stack([np.mean(v, axis=0) for v in by_speaker.values()])

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.astype(np.float64), b.astype(np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    out: dict[str, list[float]] = {"cosine": [], "segment": [], "full": [], "asnorm": []}
    for trial in read_trials(data / TEST_SET / "trials" / "tiny_O"):
        plain = cos(vectors[trial.enrol], vectors[trial.test])
        pairs = [cos(segments[trial.enrol][i], segments[trial.test][j])
                 for i, j in itertools.product(range(5), repeat=2)]
        out["cosine"].append(plain)
        out["segment"].append(sum(pairs) / 25)
        out["full"].append((plain + sum(pairs) / 25) / 2)
        out["asnorm"].append(naive_asnorm(vectors[trial.enrol], vectors[trial.test], cohort, TOP_N))
    return out


def read_tsv(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_score_cli_end_to_end(tmp_path: Path) -> None:
    exp, data = make_experiment(tmp_path)
    (exp / "embeddings" / f"{TEST_SET}_reverb_x").mkdir()          # not a condition: ignored with a warning
    proc = run_module("nawsv.bin.score", *score_args(exp, data), check=True)
    assert "ignoring embedding set tiny_test_reverb_x" in proc.stderr
    assert proc.stdout == (exp / "results.md").read_text()

    labels = [t.target for t in read_trials(data / TEST_SET / "trials" / "tiny_O")]
    rows = read_tsv(exp / "results.tsv")
    assert [(r["condition"], r["method"]) for r in rows] == [
        (c, m) for c in ("clean", "noise_0", "music_0") for m in ("cosine", "segment", "full", "asnorm")]
    md = (exp / "results.md").read_text()
    segment_eers = {}
    for condition, set_name in [("clean", TEST_SET), ("noise_0", f"{TEST_SET}_noise_0"),
                                ("music_0", f"{TEST_SET}_music_0")]:
        expected = independent_scores(exp, data, set_name)
        for method, scores in expected.items():
            score_file = exp / "scores" / f"tiny_O_{condition}_{method}.score"
            written = [float(line.split()[2]) for line in score_file.read_text().splitlines()]
            assert written == pytest.approx(scores, abs=1e-4 if method == "asnorm" else 1e-6)
            # metrics from the scores as written (float32 values), by brute force
            eer, _, dcfs, _ = brute_force(written, labels, (0.01, 0.05))
            row = next(r for r in rows if r["condition"] == condition and r["method"] == method)
            assert row["set"] == set_name and row["num_trials"] == "120"
            assert float(row["eer_percent"]) == pytest.approx(100 * eer, abs=1e-4)
            assert float(row["mindcf_0.01"]) == pytest.approx(dcfs[0.01][0], abs=1e-6)
            assert float(row["mindcf_0.05"]) == pytest.approx(dcfs[0.05][0], abs=1e-6)
            bounds = [float(row[f"{name}_{end}"]) for name in ("eer_percent", "mindcf_0.01", "mindcf_0.05")
                      for end in ("low", "high")]
            assert bounds[0] <= bounds[1] and bounds[2] <= bounds[3] and bounds[4] <= bounds[5]
            if condition == "clean":
                assert (f"| {method} | {100 * eer:.3f} [{bounds[0]:.3f}, {bounds[1]:.3f}] | "
                        f"{dcfs[0.01][0]:.4f} [{bounds[2]:.4f}, {bounds[3]:.4f}] | ") in md
            if method == "segment":
                segment_eers[condition] = 100 * eer
    noise, music = segment_eers["noise_0"], segment_eers["music_0"]
    assert f"| noise | {noise:.3f} [" in md
    assert f"| **mean (noise/music)** | {(noise + music) / 2:.3f} [" in md
    assert "1000 resamples of the trial list's speakers with replacement (seed 0)" in md
    utt2spk = dict(line.split() for line in (data / TEST_SET / "utt2spk").read_text().splitlines())
    kept = dict(line.split() for line in (exp / "scores" / "tiny_O.utt2spk").read_text().splitlines())
    assert kept == {key: utt2spk[key] for trial in read_trials(data / TEST_SET / "trials" / "tiny_O")
                    for key in (trial.enrol, trial.test)}
    assert "the mean of the 2 cells noise/music x 0 dB." in md
    saved = yaml.safe_load((exp / "scores" / "config.yaml").read_text())
    assert saved["conditions"] == ["noise_0", "music_0"] and saved["asnorm_top_n"] == TOP_N


def test_intervals_are_reproducible_and_can_be_turned_off(tmp_path: Path) -> None:
    exp, data = make_experiment(tmp_path, seed=3)
    assert run_main(score_main, score_args(exp, data, "--override", "bootstrap.resamples=200")) == 0
    first = (exp / "results.tsv").read_text()
    assert run_main(score_main, score_args(exp, data, "--override", "bootstrap.resamples=200")) == 0
    assert (exp / "results.tsv").read_text() == first
    assert run_main(score_main, score_args(exp, data, "--override", "bootstrap.resamples=200",
                                           "--override", "bootstrap.seed=1")) == 0
    assert (exp / "results.tsv").read_text() != first
    assert run_main(score_main, score_args(exp, data, "--override", "bootstrap.resamples=0")) == 0
    header = (exp / "results.tsv").read_text().splitlines()[0].split("\t")
    assert header[-1] == "mindcf_0.05" and " [" not in (exp / "results.md").read_text()
    rows = read_tsv(exp / "results.tsv")
    assert [r["eer_percent"] for r in rows] == [line.split("\t")[7] for line in first.splitlines()[1:]]


def test_missing_segments_skip_segment_and_full(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp, data = make_experiment(tmp_path, seed=1)
    for name in ("xvector_seg.scp", "xvector_seg.ark"):
        (exp / "embeddings" / f"{TEST_SET}_music_0" / name).unlink()
    assert run_main(score_main, score_args(exp, data)) == 0
    rows = read_tsv(exp / "results.tsv")
    music = sorted(r["method"] for r in rows if r["condition"] == "music_0")
    assert music == ["asnorm", "cosine"]
    assert sorted(r["method"] for r in rows if r["condition"] == "noise_0") == ["asnorm", "cosine", "full", "segment"]
    assert "no xvector_seg.scp; skipping the segment and full methods" in capsys.readouterr().err
    assert run_main(score_main, score_args(exp, data, "--override", "asnorm_top_n=300")) == 0
    assert capsys.readouterr().err.count("asnorm_top_n=300 exceeds the 10 cohort speakers") == 1
    assert "asnorm: top 10 of 10 cohort speakers" in (exp / "results.md").read_text()


def test_unknown_utterance_and_missing_cohort_are_clear_errors(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    exp, data = make_experiment(tmp_path, seed=2)
    trials_path = data / TEST_SET / "trials" / "tiny_O"
    trials_path.write_text(trials_path.read_text() + "id10000/video0000000/00000.wav id99999/x/00001.wav nontarget\n")
    results_before = exp / "results.tsv"
    assert run_main(score_main, score_args(exp, data)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ERROR: trial list ") and str(trials_path) in err
    assert "'id99999/x/00001.wav'" in err and str(exp / "embeddings" / TEST_SET / "xvector.scp") in err
    assert not results_before.exists()
    args = ["--exp_dir", str(exp), "--data_dir", str(data), "--test_set", TEST_SET]
    assert run_main(score_main, args) == 2
    assert "asnorm method needs a cohort: pass --cohort_set" in capsys.readouterr().err
    assert run_main(score_main, args + ["--override", "methods=[cosine, bogus]"]) == 2
    assert "unknown scoring method 'bogus'" in capsys.readouterr().err


def test_unlabelled_trial_list_gets_scores_but_no_metrics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp, data = make_experiment(tmp_path, seed=5)
    labelled = (data / TEST_SET / "trials" / "tiny_O").read_text().splitlines()
    (data / TEST_SET / "trials" / "blind").write_text("".join(" ".join(line.split()[:2]) + "\n" for line in labelled))
    assert run_main(score_main, score_args(exp, data, "--override", "methods=[cosine]")) == 0
    assert "trial list blind has no target/nontarget labels" in capsys.readouterr().err
    blind = (exp / "scores" / "blind_clean_cosine.score").read_text().splitlines()
    labelled_scores = (exp / "scores" / "tiny_O_clean_cosine.score").read_text().splitlines()
    assert [line.split() for line in blind] == [line.split()[:3] for line in labelled_scores]
    assert {r["trials"] for r in read_tsv(exp / "results.tsv")} == {"tiny_O"}
    assert "## Trials blind\n\nUnlabelled trial list: scores written, no metrics." in (exp / "results.md").read_text()
