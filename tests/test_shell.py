"""tools/parse_options.sh and the run.sh stage engine."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
set -euo pipefail
stage=1
stop_stage=8
use_gpu=false
name=default
. {root}/tools/parse_options.sh
echo "$stage $stop_stage $use_gpu $name $#"
"""


def parse(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", SCRIPT.format(root=ROOT), "script", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, expected", [
    ((), "1 8 false default 0"),
    (("--stop_stage", "3"), "1 3 false default 0"),
    (("--stop-stage", "3", "--stage=2"), "2 3 false default 0"),
    (("--use_gpu", "true", "--name", "with space"), "1 8 true with space 0"),
    (("--stage", "4", "positional", "more"), "4 8 false default 2"),
])
def test_parse_options(args: tuple, expected: str) -> None:
    proc = parse(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


@pytest.mark.parametrize("args, message", [
    (("--stag", "3"), "unknown option --stag"),
    (("--use_gpu", "yes"), "takes true or false"),
    (("--stage",), "needs a value"),
])
def test_parse_options_errors(args: tuple, message: str) -> None:
    proc = parse(*args)
    assert proc.returncode != 0 and message in proc.stderr


def test_help() -> None:
    proc = subprocess.run(["bash", str(ROOT / "run.sh"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "Usage: bash run.sh" in proc.stdout and "--stop_stage" in proc.stdout and "--corpus" in proc.stdout


def test_dry_run_prints_stage_commands(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(ROOT / "run.sh"), "--dry_run", "true", "--data", str(tmp_path / "d"),
                           "--stop_stage", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "stage 1: data preparation" in proc.stdout
    assert "+ bash" in proc.stdout and "local/prepare_data.sh" in proc.stdout and f"--data {tmp_path}/d" in proc.stdout
    assert not (tmp_path / "d").exists()


def test_unknown_recipe_option() -> None:
    proc = subprocess.run(["bash", str(ROOT / "run.sh"), "--vox1_root", "/x"], capture_output=True, text=True)
    assert proc.returncode != 0 and "unknown option --vox1_root" in proc.stderr


def test_ablation_runs_the_baseline_on_the_same_data_then_compares(tmp_path: Path) -> None:
    exp = tmp_path / "exp" / "nawsv"
    proc = subprocess.run(["bash", str(ROOT / "run.sh"), "--dry_run", "true", "--exp", str(exp), "--stage", "3",
                           "--ablation", "true"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    nawsv_part, _, baseline_part = out.partition("ablation: baseline without warm-up, stages 3-7")
    assert "train warmup" in nawsv_part and "stage 8: export" in nawsv_part
    assert "warm-up skipped (--skip_warmup true: baseline)" in baseline_part and "train warmup" not in baseline_part
    assert f"--init none --exp_dir {tmp_path}/exp/baseline/finetune" in baseline_part
    assert "stage 8" not in baseline_part
    assert (f"+ python -m nawsv.bin.compare {tmp_path}/exp/baseline {exp} --out {tmp_path}/exp/compare"
            in out.splitlines())
    default = subprocess.run(["bash", str(ROOT / "run.sh"), "--dry_run", "true", "--exp", str(exp), "--stage", "3"],
                             capture_output=True, text=True)
    assert "baseline" not in default.stdout and "compare" not in default.stdout
    both = subprocess.run(["bash", str(ROOT / "run.sh"), "--dry_run", "true", "--ablation", "true", "--skip_warmup",
                           "true"], capture_output=True, text=True)
    assert both.returncode != 0 and "--ablation true runs the baseline beside NAW-SV" in both.stderr
