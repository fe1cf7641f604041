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


def test_stage4_through_wespeaker_is_an_option(tmp_path: Path) -> None:
    args = ["bash", str(ROOT / "run.sh"), "--dry_run", "true", "--exp", str(tmp_path / "e"), "--stage", "4",
            "--stop_stage", "4", "--phase2_trainer"]
    proc = subprocess.run([*args, "wespeaker", "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    command = next(line for line in proc.stdout.splitlines() if line.startswith("+ "))
    assert "tools/wespeaker_phase2.sh --conf_dir" in command and "egs/mini/conf/wespeaker" in command
    assert f"--init {tmp_path}/e/warmup/student.pt" in command and "--device cpu" in command
    assert "nawsv.bin.train" not in proc.stdout
    proc = subprocess.run([*args, "espnet"], capture_output=True, text=True)
    assert proc.returncode != 0 and "--phase2_trainer must be nawsv or wespeaker, got 'espnet'" in proc.stderr


def test_wespeaker_phase2_script_checks_its_inputs(tmp_path: Path) -> None:
    script = str(ROOT / "tools" / "wespeaker_phase2.sh")
    proc = subprocess.run(["bash", script, "--conf_dir", "c", "--train_data", "d"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--init is required" in proc.stderr
    proc = subprocess.run(["bash", script, "--conf_dir", "c", "--train_data", "d", "--init", str(tmp_path / "none.pt"),
                           "--exp_dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "does not exist (run stage 3)" in proc.stderr


FAKE_PYTHON = """#!/usr/bin/env bash
# A stand-in interpreter: pip prints setuptools' editable-install warning block (or fails), imports succeed.
if [ "$1 $2" = "-m pip" ]; then
  printf '%s\\n' "SetuptoolsDeprecationWarning: Installing editable without a build backend hook" \\
    "        ********************************************************************************" \\
    "        !!" >&2
  if [ -n "${FAKE_PIP_FAIL:-}" ]; then echo "ERROR: No matching distribution found for $FAKE_PIP_FAIL" >&2; exit 1; fi
  exit 0
fi
case "$*" in *torch.version.cuda*) echo cpu ;; *__version__*) echo "torch 2.13.0 transformers 5.24.0" ;; esac
exit 0
"""


@pytest.mark.parametrize("fail", [False, True], ids=["quiet", "pip_error_shown"])
def test_install_prints_its_own_lines_and_pips_errors(tmp_path: Path, fail: bool) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(FAKE_PYTHON)
    (venv / "bin" / "python").chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "NAWSV_VENV": str(venv), **({"FAKE_PIP_FAIL": "nawsv"} if fail else {})}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "install.sh")], capture_output=True, text=True, env=env)
    if fail:
        assert proc.returncode == 1
        assert "ERROR: No matching distribution found for nawsv" in proc.stderr       # pip's own error, shown
        assert "install.sh: ERROR: could not upgrade pip" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        lines = (proc.stdout + proc.stderr).splitlines()
        assert lines and all(line.startswith("install.sh: ") for line in lines), lines
        assert "install.sh: done" in lines[-1]
