"""``nawsv compare``: the table matches each results.tsv cell by cell, differences are paired, a system compared
with itself differs by exactly 0, and experiments on other trial lists or conditions are refused in one line."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from nawsv.bin.compare import main as compare_main
from nawsv.bin.score import main as score_main
from nawsv.utils.cli import run_main
from tests.test_score_stage import TEST_SET, make_experiment, read_tsv, score_args

RESAMPLES = "bootstrap.resamples=300"


def scored(root: Path, seed: int, data: Path | None = None, *extra: str) -> tuple[Path, Path]:
    """An experiment with its own embeddings, scored on ``data`` (its own data dir when None)."""
    exp, own = make_experiment(root, seed=seed)
    data = data or own
    assert run_main(score_main, score_args(exp, data, "--override", RESAMPLES, *extra)) == 0
    return exp, data


def compare_rows(out: Path) -> list[dict[str, str]]:
    return read_tsv(out / "compare.tsv")


def test_table_matches_both_results_tsv_cell_by_cell(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base, data = scored(tmp_path / "base", 0)
    other, _ = scored(tmp_path / "other", 1, data)
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert run_main(compare_main, [str(base), str(other), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "compare.md").read_text()
    rows = compare_rows(out)
    names = ("base/exp", "other/exp")
    results = [{(r["condition"], r["method"]): r for r in read_tsv(exp / "results.tsv")} for exp in (base, other)]
    cells = [r for r in rows if r["metric"] == "eer" and not r["cell"].startswith("mean")]
    assert [r["cell"] for r in cells] == ["clean (full)", "noise 0 dB", "music 0 dB"]
    for row in cells:
        condition = "clean" if row["cell"].startswith("clean") else row["cell"].replace(" dB", "").replace(" ", "_")
        method = "full" if condition == "clean" else "segment"
        for name, result in zip(names, results, strict=True):
            tsv = result[(condition, method)]
            assert float(row[name]) == pytest.approx(float(tsv["eer_percent"]), abs=1e-9)
            assert float(row[f"{name}_low"]) == pytest.approx(float(tsv["eer_percent_low"]), abs=1e-3)
            assert float(row[f"{name}_high"]) == pytest.approx(float(tsv["eer_percent_high"]), abs=1e-3)
        difference = float(results[1][(condition, method)]["eer_percent"]) - float(
            results[0][(condition, method)]["eer_percent"])
        assert float(row["other/exp-base/exp"]) == pytest.approx(difference, abs=1e-9)
        assert float(row["diff_low"]) <= float(row["diff_high"])
        dcf = next(r for r in rows if r["cell"] == row["cell"] and r["metric"] == "mindcf_0.01")
        assert float(dcf["base/exp"]) == pytest.approx(float(results[0][(condition, method)]["mindcf_0.01"]))
    mean = next(r for r in rows if r["metric"] == "eer" and r["cell"].startswith("mean (noise/music)"))
    noisy = [float(results[0][(c, "segment")]["eer_percent"]) for c in ("noise_0", "music_0")]
    assert float(mean["base/exp"]) == pytest.approx(sum(noisy) / 2)
    clean = results[0][("clean", "full")]
    assert (f"| clean (full) | {float(clean['eer_percent']):.3f} [{float(clean['eer_percent_low']):.3f}, "
            f"{float(clean['eer_percent_high']):.3f}] |") in printed
    record = yaml.safe_load((base / "protocol.yaml").read_text())        # gathered by stage 6
    assert "| base/exp |" in printed and f"| none (fine-tuned without warm-up) | {record['protocol']}" in printed
    assert (out / "compare_tiny_O.png").read_bytes().startswith(b"\x89PNG")


def test_a_system_compared_with_itself_differs_by_exactly_zero(tmp_path: Path, capsys) -> None:
    base, _ = scored(tmp_path / "base", 0)
    twin = tmp_path / "twin" / "exp"
    shutil.copytree(base, twin)
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert run_main(compare_main, [str(base), str(twin), "--out", str(out)]) == 0
    for row in compare_rows(out):
        assert (row["twin/exp-base/exp"], row["diff_low"], row["diff_high"]) == ("0", "0", "0")
    assert "+0.000 [+0.000, +0.000]" in capsys.readouterr().out


def test_protocol_record_and_config_differences_are_shown(tmp_path: Path, capsys) -> None:
    base, data = scored(tmp_path / "base", 0)
    other, _ = scored(tmp_path / "other", 1, data, "--override", "asnorm_top_n=5")
    (other / "protocol.yaml").write_text("protocol: released\ndiffers_from_released: {eer: interpolated}\n")
    capsys.readouterr()
    assert run_main(compare_main, [str(base), str(other)]) == 0
    text = capsys.readouterr().out
    assert "| other/exp |" in text and "| released; differs from released: eer=interpolated |" in text
    assert "- scoring `asnorm_top_n`: base/exp 6, other/exp 5" in text


def test_other_trial_lists_or_conditions_are_refused_in_one_line(tmp_path: Path, capsys) -> None:
    base, data = scored(tmp_path / "base", 0)
    fewer, _ = scored(tmp_path / "fewer", 1, data, "--override", "conditions=[noise_0]")
    capsys.readouterr()
    assert run_main(compare_main, [str(base), str(fewer)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ERROR: cannot compare base/exp and fewer/exp: they were scored on different trial "
                              "lists or conditions (only base/exp has tiny_O/music_0)")
    trials = data / TEST_SET / "trials" / "tiny_O"
    other_data = tmp_path / "other_data"
    shutil.copytree(data, other_data)
    lines = trials.read_text().splitlines()
    (other_data / TEST_SET / "trials" / "tiny_O").write_text("\n".join(lines[1:] + lines[:1]) + "\n")
    shuffled, _ = scored(tmp_path / "shuffled", 1, other_data)
    capsys.readouterr()
    assert run_main(compare_main, [str(base), str(shuffled)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ERROR: cannot compare base/exp and shuffled/exp: trial list tiny_O "
                                               "differs (120 vs 120 trials, first difference at trial 1)")
    assert run_main(compare_main, [str(base)]) == 2
    assert "compare needs at least two experiment dirs" in capsys.readouterr().err
