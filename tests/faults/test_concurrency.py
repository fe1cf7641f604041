"""Real concurrent runs: a second training run while one is running is refused; the jobs of an array (stages 2
and 5) run side by side and the set is merged exactly once, identical to a single-job run."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from nawsv.bin.train import main as train_main
from tests.faults.conftest import assert_user_error, cli, extract_args, leftovers, noisy_args
from tests.faults.test_kill_resume import run, start, visible_files
from tests.test_extract import write_data_dir

pytestmark = pytest.mark.slow


def test_second_training_run_is_refused_while_the_first_runs(train_data: dict, tiny_configs: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    exp = tmp_path / "exp"
    argv = ["warmup", "--config", tiny_configs["warmup"], "--train_data", train_data["dev"], "--musan",
            train_data["musan_train"], "--exp_dir", exp, "--device", "cpu", "--override", "epochs=4",
            "--override", "run.checkpoint_every_steps=1"]
    first = start("nawsv.bin.train", argv)
    while not (exp / "checkpoints" / "step_0_1.json").exists():
        assert first.poll() is None, first.stderr.read()[-3000:]
        time.sleep(0.01)
    second = cli(train_main, argv, capsys)
    assert first.poll() is None, "the first run ended before the second one started: nothing was tested"
    line = assert_user_error(second, str(exp), "is in use by stage warmup (pid", "wait for it to finish")
    assert str(first.pid) in line
    assert first.wait() == 0, first.stderr.read()[-3000:]
    assert (exp / "student.pt").is_file() and leftovers(exp) == []


def both_succeed(module: str, argvs: list[list]) -> None:
    """Start the jobs together, as a Slurm array does, and wait for all of them."""
    procs = [start(module, argv) for argv in argvs]
    for proc in procs:
        assert proc.wait() == 0, proc.stderr.read()[-3000:]


def test_stage2_array_jobs_side_by_side(train_data: dict, tmp_path: Path) -> None:
    extra = ["--override", "categories=[noise, music]", "--override", "chunk_size=2"]
    run("nawsv.bin.make_noisy_sets", noisy_args(train_data, train_data["test"], tmp_path / "single", *extra))
    out = tmp_path / "array"
    both_succeed("nawsv.bin.make_noisy_sets", [noisy_args(train_data, train_data["test"], out, *extra, "--job", str(i),
                                                          "--num_jobs", "2") for i in range(2)])
    assert visible_files(out) == visible_files(tmp_path / "single")
    assert not list(out.glob("*/parts")) and leftovers(out) == []


def test_stage5_array_jobs_side_by_side(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nawsv.bin.extract import main as extract_main

    data = write_data_dir(tmp_path / "set", [(f"s{i % 2}/u{i}", 0.8 + 0.1 * i) for i in range(6)])
    assert cli(extract_main, extract_args(tiny_model, data, tmp_path / "single" / "emb"), capsys).rc == 0
    out = tmp_path / "array" / "emb"
    both_succeed("nawsv.bin.extract", [extract_args(tiny_model, data, out, "--job", str(i), "--num_jobs", "2")
                                       for i in range(2)])
    assert visible_files(out.parent) == visible_files(tmp_path / "single")
    assert not (out / "parts").exists() and leftovers(out) == []
