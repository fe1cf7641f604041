"""SIGKILL in the middle of stages 2, 3, 5 and 6; the rerun completes and equals an uninterrupted run.

Stage 2 audio and manifests, stage 5 arks (CPU, same batching) and stage 6 score files are compared byte for
byte; stage 3 weights are bit-identical on CPU. A kill may leave hidden temporaries (``.<name>.*.tmp``) of the
atomic writer behind; no reader looks at them and every visible file must equal the uninterrupted run's.
Every run here is a separate process started like run.sh starts it, with one thread (same arithmetic).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from nawsv.formats.kaldi import write_trials
from nawsv.scoring.synthetic import (corrupted, random_trials, speaker_structured_set, write_embedding_set,
                                     write_utt2spk)
from nawsv.train import checkpoint as ckpt
from tests import conftest
from tests.conftest import ROOT, ReferenceWarmup, reference_warmup_argv
from tests.faults.conftest import cli, extract_args, noisy_args
from tests.test_extract import write_data_dir

pytestmark = pytest.mark.slow
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def start(module: str, argv: list) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *map(str, argv)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def run(module: str, argv: list) -> str:
    proc = subprocess.run([sys.executable, "-m", module, *map(str, argv)], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def kill_when(module: str, argv: list, ready: Callable[[], bool], extra_delay: float = 0.0) -> None:
    """Kill the stage (one thread, like every run here) once ``ready()`` holds."""
    conftest.kill_when(module, argv, ready, extra_delay, timeout=120, env=ENV)


def visible_files(root: Path) -> dict[str, bytes]:
    """Every non-hidden file under ``root`` with its bytes, the root's own path replaced (lists hold paths)."""
    files = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files[str(relative)] = path.read_bytes().replace(str(root).encode(), b"<root>")
    return files


# ---- stage 2 ----

def test_stage2_killed_mid_set_resumes_identically(train_data: dict, tmp_path: Path) -> None:
    extra = ["--override", "categories=[noise, music]", "--override", "snrs=[0, 10]", "--override", "chunk_size=1"]
    run("nawsv.bin.make_noisy_sets", noisy_args(train_data, train_data["test"], tmp_path / "full", *extra))
    out = tmp_path / "killed"
    kill_when("nawsv.bin.make_noisy_sets", noisy_args(train_data, train_data["test"], out, *extra),
              lambda: any(out.glob("*/parts/*.tsv")))
    assert not all((d / "manifest.tsv").exists() for d in out.iterdir() if d.is_dir())     # killed mid-set
    run("nawsv.bin.make_noisy_sets", noisy_args(train_data, train_data["test"], out, *extra))
    assert visible_files(out) == visible_files(tmp_path / "full")


# ---- stage 5 ----

def test_stage5_killed_mid_set_resumes_identically(tiny_model: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from nawsv.bin.extract import main as extract_main

    utts = [(f"s{i % 3}/u{i}", 0.8 + 0.1 * i) for i in range(8)]
    data = write_data_dir(tmp_path / "set", utts)
    extra = ["--override", "chunk_size=1"]
    assert cli(extract_main, extract_args(tiny_model, data, tmp_path / "full" / "emb", *extra), capsys).rc == 0
    out = tmp_path / "killed" / "emb"
    kill_when("nawsv.bin.extract", extract_args(tiny_model, data, out, *extra),
              lambda: len(list(out.glob("parts/*/*.xvector_seg.ark"))) >= 2)
    assert not (out / "xvector.scp").exists()
    run("nawsv.bin.extract", extract_args(tiny_model, data, out, *extra))
    full = visible_files(tmp_path / "full")
    assert visible_files(tmp_path / "killed") == full and "emb/xvector_seg.ark" in full


# ---- stage 6 ----

def large_experiment(root: Path) -> tuple[Path, Path]:
    """Enough trials (60k per list, 3 conditions, 4 methods) that writing the scores takes a while."""
    rng = np.random.default_rng(0)
    test = speaker_structured_set(rng, num_speakers=40, utts_per_speaker=10, dim=16, segments=3)
    cohort = speaker_structured_set(rng, num_speakers=20, utts_per_speaker=3, dim=16, first_speaker=20000)
    exp, data = root / "exp", root / "data"
    write_embedding_set(exp / "embeddings" / "big_test", test)
    for name, strength in (("noise_0", 1.5), ("music_0", 1.0)):
        write_embedding_set(exp / "embeddings" / f"big_test_{name}", corrupted(rng, test, strength))
    write_embedding_set(exp / "embeddings" / "big_train", cohort)
    write_utt2spk(data / "big_train", cohort)
    write_utt2spk(data / "big_test", test)              # stage 1 writes it; the speaker bootstrap reads it
    write_trials(data / "big_test" / "trials" / "big_O", random_trials(rng, test, 10, 60000))
    return exp, data


def test_stage6_killed_while_writing_resumes_identically(tmp_path: Path) -> None:
    def argv(exp: Path, data: Path) -> list:
        return ["--exp_dir", exp, "--data_dir", data, "--test_set", "big_test", "--cohort_set", "big_train",
                "--override", "asnorm_top_n=10"]

    full_exp, full_data = large_experiment(tmp_path / "full")
    run("nawsv.bin.score", argv(full_exp, full_data))
    exp, data = large_experiment(tmp_path / "killed")
    kill_when("nawsv.bin.score", argv(exp, data), lambda: any((exp / "scores").glob("*.score")))
    assert not (exp / "results.tsv").exists()
    run("nawsv.bin.score", argv(exp, data))
    assert visible_files(tmp_path / "killed") == visible_files(tmp_path / "full")


# ---- stage 3 ----

def first_checkpoint(exp: Path) -> Callable[[], bool]:
    return lambda: (exp / "checkpoints" / "step_0_1.json").exists()


def assert_same_training(reference: Path, resumed: Path) -> None:
    a = torch.load(reference / "student.pt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(resumed / "student.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last_a = ckpt.load_checkpoint(reference / "checkpoints" / "epoch_2.pt")["modules"]
    last_b = ckpt.load_checkpoint(resumed / "checkpoints" / "epoch_2.pt")["modules"]
    for module in ("head", "eapn"):
        assert all(torch.equal(last_a[module][k], last_b[module][k]) for k in last_a[module]), module


def test_stage3_killed_mid_epoch_resumes_identically(train_data: dict, tiny_configs: dict,
                                                     reference_warmup: ReferenceWarmup,
                                                     tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    argv = reference_warmup_argv(train_data, tiny_configs["warmup"], exp)
    kill_when("nawsv.bin.train", argv, lambda: (exp / "checkpoints" / "step_1_1.json").exists(), extra_delay=0.05)
    assert not (exp / "student.pt").exists()
    stderr = run("nawsv.bin.train", argv)
    assert "resumed from" in stderr
    assert_same_training(reference_warmup.exp, exp)


@pytest.mark.parametrize("damage", ["truncate", "no_sidecar"])
def test_stage3_half_written_checkpoint_falls_back_to_the_previous_one(train_data: dict, tiny_configs: dict,
                                                                       reference_warmup: ReferenceWarmup,
                                                                       tmp_path: Path,
                                                                       damage: str) -> None:
    """The reference run with its end cut off (no student.pt) and its newest checkpoint damaged as by a crash
    while it was written: the rerun skips it, resumes from the previous one and ends bit-identical."""
    exp = tmp_path / "exp"
    shutil.copytree(reference_warmup.exp, exp)
    (exp / "student.pt").unlink()
    newest = exp / "checkpoints" / "epoch_2.pt"
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    else:                                    # killed between the checkpoint and its sidecar
        newest.with_suffix(".json").unlink()
    stderr = run("nawsv.bin.train", reference_warmup_argv(train_data, tiny_configs["warmup"], exp))
    assert f"skipping checkpoint {newest}" in stderr
    assert f"resumed from {exp / 'checkpoints' / 'epoch_1.pt'}" in stderr
    assert_same_training(reference_warmup.exp, exp)


@pytest.mark.parametrize("attempt", [1, 2])
def test_stage3_killed_at_a_random_point_resumes_identically(train_data: dict, tiny_configs: dict,
                                                             reference_warmup: ReferenceWarmup,
                                                             tmp_path: Path, attempt: int) -> None:
    """Killed at a random moment of a run that writes a checkpoint after every step (so the kill often lands
    inside a checkpoint write); whatever it hit, the rerun ends with the reference weights."""
    reference, seconds = reference_warmup.exp, reference_warmup.seconds_after_first_checkpoint
    delay = random.uniform(0.0, 0.9 * seconds)
    exp = tmp_path / "exp"
    argv = reference_warmup_argv(train_data, tiny_configs["warmup"], exp)
    proc = start("nawsv.bin.train", argv)
    while not first_checkpoint(exp)() and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stderr = run("nawsv.bin.train", argv)
    assert "resumed from" in stderr or "stage already finished" in stderr, f"killed {delay:.3f} s in:\n{stderr}"
    assert_same_training(reference, exp)
