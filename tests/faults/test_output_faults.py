"""Faults on the output side, every stage: a read-only output directory, a full disk, a second run in an
output directory another run is writing, and a file system without flock.

Each stage is first run once successfully; then the fault is injected and the stage is rerun with work to do.
Expected: one ``ERROR:`` line naming the path (and the fix), exit 2, every file that existed before byte- and
mtime-identical, no temporaries left behind; after the fault is gone the same rerun succeeds (no stale lock).
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

from nawsv.bin.export import main as export_main
from nawsv.bin.extract import main as extract_main
from nawsv.bin.make_noisy_sets import main as noisy_main
from nawsv.bin.prepare_data import main as prepare_main
from nawsv.bin.report import main as report_main
from nawsv.bin.score import main as score_main
from nawsv.bin.train import main as train_main
from tests.faults.conftest import (add_utterance, assert_user_error, cli, extract_args, leftovers, lock_held,
                                   noisy_args, read_only, snapshot)
from tests.test_extract import write_data_dir, write_tiny_model
from tests.test_score_stage import make_experiment, score_args


@dataclasses.dataclass
class StageRun:
    """A stage that already ran once, and the arguments of a rerun that has work to do."""

    main: Callable
    argv: list
    outputs: Path          # the tree the stage writes into (its existing files must survive any fault)
    lock: Path             # the lock file a running instance of this rerun holds
    logs: tuple[str, ...] = ()     # files a rerun appends to (training logs)

    def existing(self) -> dict:
        return {name: value for name, value in snapshot(self.outputs).items()
                if name not in self.logs and not name.endswith(".lock")}


def _stage1(root: Path, env: dict, capsys) -> StageRun:
    tree = shutil.copytree(env["tiny_corpus"]["voxceleb"] / "test" / "wav", root / "wav")
    argv = ["speakers", "--wav_root", tree, "--out", root / "data" / "test", "--override", "nj=1"]
    assert cli(prepare_main, argv, capsys).rc == 0
    return StageRun(prepare_main, argv, root / "data", root / "data" / ".test.lock")


def _stage2(root: Path, env: dict, capsys) -> StageRun:
    clean = shutil.copytree(env["train_data"]["test"], root / "clean" / "tiny_test")
    assert cli(noisy_main, noisy_args(env["train_data"], clean, root / "noisy"), capsys).rc == 0
    argv = noisy_args(env["train_data"], clean, root / "noisy", "--override", "snrs=[0, 10]")
    return StageRun(noisy_main, argv, root / "noisy", root / "noisy" / ".tiny_test.job-0-of-1.lock")


def _train(task: str, root: Path, env: dict, capsys) -> StageRun:
    """Two epochs, then the state of a run killed after the first: epoch_1.pt, no epoch_2.pt, no final model."""
    data = env["train_data"]
    argv = [task, "--config", env["tiny_configs"][task], "--train_data", data["dev"], "--musan", data["musan_train"],
            "--rirs", data["rirs"], "--exp_dir", root / "exp", "--device", "cpu", "--override", "epochs=2"]
    argv += (["--override", "adapter_only_epochs=1"] if task == "warmup" else
             ["--init", "none", "--override", "frozen_ssl_epochs=1", "--override", "large_margin_epochs=0",
              "--override", "average_last=1"])
    assert cli(train_main, argv, capsys).rc == 0
    for name in ("student.pt", "avg_model.pt", "checkpoints/epoch_2.pt", "checkpoints/epoch_2.json"):
        (root / "exp" / name).unlink(missing_ok=True)
    return StageRun(train_main, argv, root / "exp", root / "exp" / ".lock", logs=("train.log",))


def _stage5(root: Path, env: dict, capsys) -> StageRun:
    data = write_data_dir(root / "set", [("a/1", 1.0), ("b/2", 1.1)])
    argv = extract_args(env["tiny_model"], data, root / "emb")
    assert cli(extract_main, argv, capsys).rc == 0
    add_utterance(data, "c/3", write_data_dir(root / "more", [("c/3", 0.9)]) / "wav" / "c_3.wav")
    return StageRun(extract_main, argv, root / "emb", root / "emb" / ".job-0-of-1.lock")


def _stage6(root: Path, env: dict, capsys) -> StageRun:
    exp, data = make_experiment(root)
    argv = score_args(exp, data)
    assert cli(score_main, argv, capsys).rc == 0
    return StageRun(score_main, argv, exp, exp / ".score.lock")


def _stage7(root: Path, env: dict, capsys) -> StageRun:
    run = _stage6(root, env, capsys)
    argv = ["--exp_dir", run.outputs]
    assert cli(report_main, argv, capsys).rc == 0
    return StageRun(report_main, argv, run.outputs, run.outputs / ".report.lock")


def _stage8(root: Path, env: dict, capsys) -> StageRun:
    model = root / "finetune" / "avg_model.pt"
    model.parent.mkdir()
    shutil.copy(env["tiny_model"], model)
    argv = ["--model", model, "--out_dir", root / "exp" / "export"]
    assert cli(export_main, argv, capsys).rc == 0
    shutil.copy(env["other_model"], model)                  # fine-tuning was rerun: a new model to export
    return StageRun(export_main, argv, root / "exp", root / "exp" / ".export.lock")


STAGES = {"1-prepare": _stage1, "2-noisy": _stage2, "3-warmup": lambda *a: _train("warmup", *a),
          "4-finetune": lambda *a: _train("finetune", *a), "5-extract": _stage5, "6-score": _stage6,
          "7-report": _stage7, "8-export": _stage8}


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("other_model") / "avg_model.pt", seed=1)


@pytest.fixture
def env(tiny_corpus, train_data, tiny_configs, tiny_model, other_model) -> dict:
    return {"tiny_corpus": tiny_corpus, "train_data": train_data, "tiny_configs": tiny_configs,
            "tiny_model": tiny_model, "other_model": other_model}


def rerun_succeeds(run: StageRun, capsys) -> None:
    result = cli(run.main, run.argv, capsys)
    assert result.rc == 0, result.err
    assert leftovers(run.outputs) == []


@pytest.mark.parametrize("stage", STAGES)
def test_read_only_output_dir(stage: str, env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = STAGES[stage](tmp_path, env, capsys)
    before = run.existing()
    with read_only(run.outputs):
        line = assert_user_error(cli(run.main, run.argv, capsys), str(run.outputs), "cannot write", "writable")
    assert "Permission denied" in line or "Operation not permitted" in line
    assert run.existing() == before and leftovers(run.outputs) == []
    rerun_succeeds(run, capsys)


@pytest.mark.parametrize("stage", STAGES)
def test_disk_full(stage: str, env: dict, tmp_path: Path, capsys: pytest.CaptureFixture, disk_full) -> None:
    run = STAGES[stage](tmp_path, env, capsys)
    before = run.existing()
    failed = disk_full()
    assert_user_error(cli(run.main, run.argv, capsys), "No space left on device", "free space")
    assert failed, "no write was attempted"
    after = run.existing()
    assert {name: after[name] for name in before} == before
    assert leftovers(run.outputs) == []


@pytest.mark.parametrize("stage", STAGES)
def test_second_run_while_one_is_running(stage: str, env: dict, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    run = STAGES[stage](tmp_path, env, capsys)
    before = run.existing()
    with lock_held(run.lock.parent, run.lock.name, "stage under test (first run)"):
        line = assert_user_error(cli(run.main, run.argv, capsys), "is in use by stage under test (first run)",
                                 str(run.lock))
        assert "wait for it to finish" in line
        assert run.existing() == before
    rerun_succeeds(run, capsys)


@pytest.mark.parametrize("stage", STAGES)
def test_file_system_without_flock(stage: str, env: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Lustre without -o flock: the lock request fails (ENOLCK); the stage says so, and runs unlocked when told."""
    run = STAGES[stage](tmp_path, env, capsys)
    before = run.existing()

    def refuse(handle, operation: int) -> None:
        if operation & fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", refuse)
    line = assert_user_error(cli(run.main, run.argv, capsys), f"cannot lock {run.outputs}/", "No locks available",
                             "NAWSV_FILE_LOCKING=false")
    assert "mount it with flock support" in line
    assert run.existing() == before and leftovers(run.outputs) == []
    monkeypatch.setenv("NAWSV_FILE_LOCKING", "false")
    rerun_succeeds(run, capsys)


# ---- the same faults one level deeper: the lock can be taken, the outputs themselves cannot be written ----

def test_read_only_condition_dir_in_stage2(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _stage2(tmp_path, env, capsys)
    clean = Path(run.argv[run.argv.index("--data") + 1])
    add_utterance(clean, "zz/new/1.wav", write_data_dir(tmp_path / "more", [("zz/1", 1.0)]) / "wav" / "zz_1.wav")
    condition = run.outputs / "tiny_test_noise_0"
    before = run.existing()
    with read_only(condition):
        assert_user_error(cli(run.main, run.argv, capsys), f"cannot write {condition}/", "writable")
    assert {k: v for k, v in run.existing().items() if k in before} == before
    assert leftovers(run.outputs) == []


def test_read_only_scores_dir_in_stage6(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _stage6(tmp_path, env, capsys)
    before = run.existing()
    with read_only(run.outputs / "scores"):
        assert_user_error(cli(run.main, run.argv, capsys), f"cannot write {run.outputs / 'scores'}/", ".score")
    assert run.existing() == before and leftovers(run.outputs) == []


def test_read_only_checkpoint_dir_in_stage3(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = _train("warmup", tmp_path, env, capsys)
    checkpoints = run.outputs / "checkpoints"
    before = run.existing()
    with read_only(checkpoints):
        assert_user_error(cli(run.main, run.argv, capsys), f"cannot write {checkpoints / 'epoch_2.pt'}", "writable")
    after = run.existing()
    assert {name: after[name] for name in before} == before and leftovers(run.outputs) == []


def test_disk_full_at_the_second_checkpoint_keeps_the_first(env: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture, disk_full) -> None:
    from nawsv.train import checkpoint as ckpt

    run = _train("warmup", tmp_path, env, capsys)
    first = ckpt.load_checkpoint(run.outputs / "checkpoints" / "epoch_1.pt")
    failed = disk_full("epoch_2.pt")
    assert_user_error(cli(run.main, run.argv, capsys), "epoch_2.pt", "No space left on device")
    assert len(failed) == 1 and not (run.outputs / "checkpoints" / "epoch_2.pt").exists()
    assert ckpt.latest_good_checkpoint(run.outputs / "checkpoints") == run.outputs / "checkpoints" / "epoch_1.pt"
    again = ckpt.load_checkpoint(run.outputs / "checkpoints" / "epoch_1.pt")
    assert all(first["modules"]["head"][k].equal(v) for k, v in again["modules"]["head"].items())


def test_disk_full_while_merging_keeps_the_old_ark_and_scp(env: dict, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           disk_full) -> None:
    """Stage 5 replaces xvector.ark and removes the old scp in one step; a full disk reported only when the new ark
    is flushed must leave the old pair in place (readable together), not an ark without its scp."""
    run = _stage5(tmp_path, env, capsys)
    before = run.existing()
    failed = disk_full("xvector.ark", at="flush")
    assert_user_error(cli(run.main, run.argv, capsys), str(run.outputs / "xvector.ark"), "No space left on device")
    assert failed and all(name.startswith(".xvector.ark.") for name in failed)
    after = run.existing()
    assert {name: after[name] for name in before} == before and leftovers(run.outputs) == []
