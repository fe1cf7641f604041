"""Stage 7: the report CLI writes its figures and report.md; the paper's reference numbers are consistent."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nawsv.scoring.paper_reference import PAPER_RUNS, PAPER_SNRS
from tests.conftest import ROOT, run_module
from tests.test_score_stage import TEST_SET, make_experiment, read_tsv, score_args

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("run", PAPER_RUNS, ids=lambda r: r.label)
def test_paper_means_agree_with_paper_cells(run) -> None:
    for category, mean in run.category_means.items():
        assert np.mean([run.noisy[(category, s)] for s in PAPER_SNRS]) == pytest.approx(mean, abs=1e-3)
    for snr, mean in run.snr_means.items():
        assert np.mean([run.noisy[(c, snr)] for c in ("noise", "music", "babble")]) == pytest.approx(mean, abs=6e-3)
    assert np.mean(list(run.noisy.values())) == pytest.approx(run.noisy_mean_15, abs=1e-3)
    assert len(run.noisy) == 15 and run.readme_clean == pytest.approx(run.clean_full, abs=0.005)


def test_report_cli_writes_figures_and_comparison(tmp_path: Path) -> None:
    exp, data = make_experiment(tmp_path, seed=3)
    run_module("nawsv.bin.score", *score_args(exp, data), check=True)
    proc = run_module("nawsv.bin.report", "--exp_dir", str(exp), "--config", str(ROOT / "conf" / "report.yaml"),
                      check=True)
    assert "report.md" in proc.stderr
    report = exp / "report"
    for name in ("eer_vs_snr.png", "det_tiny_O.png"):
        data_bytes = (report / name).read_bytes()
        assert data_bytes.startswith(PNG_MAGIC) and len(data_bytes) > 5000
    text = (report / "report.md").read_text()
    assert "**Not comparable.** Trial list tiny_O" in text and "has 120 trials, not the 37611" in text
    rows = {(r["condition"], r["method"]): float(r["eer_percent"]) for r in read_tsv(exp / "results.tsv")}
    assert f"| clean, `full` (paper: EER_full) | {rows[('clean', 'full')]:.3f} | 1.451 | 0.846 |" in text
    assert f"| noise 0 dB | {rows[('noise_0', 'segment')]:.3f} | 5.297 | 4.393 |" in text
    assert f"| music 0 dB | {rows[('music_0', 'segment')]:.3f} | 5.521 | 4.524 |" in text
    musan_0 = (rows[("noise_0", "segment")] + rows[("music_0", "segment")]) / 2
    assert f"| mean 0 dB (noise/music) | {musan_0:.3f} | - | - |" in text    # paper's 0-dB mean has babble too
    assert "| README claim, noisy (its averaging is unresolved: spec section 6.3) | - | 2.96 | 2.31 |" in text
    assert "![DET curves of tiny_O](det_tiny_O.png)" in text and "![EER versus SNR](eer_vs_snr.png)" in text


def test_report_plots_the_warmup_diagnostics(tmp_path: Path) -> None:
    from nawsv.formats.diagnostics_record import record_diagnostics

    exp, data = make_experiment(tmp_path, seed=6)
    run_module("nawsv.bin.score", *score_args(exp, data, "--override", "bootstrap.resamples=0"), check=True)
    run_module("nawsv.bin.report", "--exp_dir", str(exp), check=True)
    assert "No warm-up in this experiment" in (exp / "report" / "report.md").read_text()
    for epoch, hint in [(0, 0.5), (1, 0.25), (2, 0.125)]:
        record_diagnostics(exp / "warmup" / "diagnostics.tsv", epoch,
                           {"hint_layer_1": hint, "hint_layer_2": 2 * hint, "hint": 2.1 * hint,
                            "cos_student": 0.5 + hint, "cos_teacher": 0.4 + hint})
    run_module("nawsv.bin.report", "--exp_dir", str(exp), check=True)
    text = (exp / "report" / "report.md").read_text()
    assert "| 0 | 1.05 | 1.0000 | 0.9000 |" in text and "| 2 | 0.2625 | 0.6250 | 0.5250 |" in text
    assert "The hint distance fell from 1.05 to 0.2625 over 2 epoch(s)." in text
    assert (exp / "report" / "warmup_diagnostics.png").read_bytes().startswith(PNG_MAGIC)


def test_report_without_results_is_a_clear_error(tmp_path: Path) -> None:
    proc = run_module("nawsv.bin.report", "--exp_dir", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "results.tsv does not exist; run stage 6" in proc.stderr


def test_scoring_imports_do_not_load_matplotlib() -> None:
    code = ("import sys, nawsv.bin.score, nawsv.bin.report, nawsv.scoring.report; "
            "sys.exit(1 if 'matplotlib' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_stage6_scores_only_listed_trials(tmp_path: Path) -> None:
    exp, data = make_experiment(tmp_path, seed=4)
    extra = data / TEST_SET / "trials" / "other"
    extra.write_text((data / TEST_SET / "trials" / "tiny_O").read_text())
    run_module("nawsv.bin.score", *score_args(exp, data, "--trials", "other", "--override",
                                              "methods=[cosine]"), check=True)
    assert {r["trials"] for r in read_tsv(exp / "results.tsv")} == {"other"}
    assert sorted(p.name for p in (exp / "scores").glob("*.score")) == [
        "other_clean_cosine.score", "other_music_0_cosine.score", "other_noise_0_cosine.score"]
