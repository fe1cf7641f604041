"""Every entry point turns a user error into one ``ERROR:`` line and exit code 2, never a traceback: checked on
the source (each ``__main__`` goes through run_main) and on real processes started like run.sh starts them."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = ROOT / "nawsv" / "bin"
ENTRY_POINTS = sorted(p.stem for p in BIN.glob("*.py") if p.stem != "__init__")
FIRST_ARGS = {"prepare_data": ["speakers", "--wav_root", "w", "--out", "o"], "make_noisy_sets": ["--data", "d",
              "--out_root", "o"], "train": ["warmup", "--train_data", "d", "--exp_dir", "o"],
              "extract": ["--model", "m", "--data_dir", "d", "--out_dir", "o"], "score": ["--exp_dir", "o",
              "--data_dir", "d", "--test_set", "t"], "report": ["--exp_dir", "o"], "export": ["--model", "m",
              "--out_dir", "o"], "make_mini_corpus": ["--out", "o"], "compare": ["exp_a", "exp_b"],
              "make_calibration_sets": ["--train_data", "d", "--musan", "m", "--out_root", "o"],
              "calibrate": ["--exp_dir", "o", "--data_dir", "d", "--calib_set", "c", "--test_set", "t"],
              "measure_quality": ["--data_root", "root_a", "--sets", "s", "--out_root", "o"]}
# Entry points without a stage config; their bad input here: directories that do not exist, named in the error.
WITHOUT_CONFIG = {"compare": "exp_a", "measure_quality": "root_a"}


def main_calls(path: Path) -> list[str]:
    """The source of every statement under ``if __name__ == "__main__":``."""
    tree = ast.parse(path.read_text())
    guards = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    return [ast.unparse(statement) for guard in guards for statement in guard.body]


def test_every_entry_point_is_listed() -> None:
    assert set(FIRST_ARGS) == set(ENTRY_POINTS)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_main_goes_through_run_main(name: str) -> None:
    assert main_calls(BIN / f"{name}.py") == ["sys.exit(run_main(main))"], name


def test_console_command_goes_through_run_main() -> None:
    path = ROOT / "nawsv" / "cli.py"
    functions = {node.name: node for node in ast.parse(path.read_text()).body if isinstance(node, ast.FunctionDef)}
    assert [ast.unparse(s) for s in functions["main"].body][-1] == "return run_main(_main, argv)"
    assert main_calls(path) == ["sys.exit(main())"]


def test_real_processes_print_one_error_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("a: [1\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = {name: subprocess.Popen([sys.executable, "-m", f"nawsv.bin.{name}", *FIRST_ARGS[name],
                                     *([] if name in WITHOUT_CONFIG else ["--config", str(config)])],
                                    cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name in ENTRY_POINTS}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 2, (name, err)
        if name in WITHOUT_CONFIG:
            assert "Traceback" not in err and lines[-1].startswith("ERROR: ") and WITHOUT_CONFIG[name] in lines[-1], \
                (name, err)
        else:
            assert "Traceback" not in err and lines[-1].startswith("ERROR: config file ") and \
                "not valid YAML" in lines[-1]
        assert sum(line.startswith("ERROR:") for line in lines) == 1, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml"]
