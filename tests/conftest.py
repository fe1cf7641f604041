"""Shared fixtures: a tiny synthetic corpus in the real layouts, generated once per session."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

# One intra-op thread for the tests and every stage they start (subprocesses inherit the environment): the
# models here are tiny, and on a 2-core machine two OpenMP threads per process spin against each other and
# against the other processes (a tiny forward pass took 20x the CPU time with two threads on a busy machine).
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from nawsv.data.synthetic import MiniCorpusSpec, make_mini_corpus  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
ROOT = Path(__file__).resolve().parents[1]

# tests/wespeaker runs WeSpeaker's trainer: only in .venv-wespeaker (tools/test.sh runs it there).
collect_ignore = [] if importlib.util.find_spec("wespeaker") else ["wespeaker"]

TINY_SPEC = MiniCorpusSpec(seed=7, dev_speakers=4, test_speakers=3, dev_utts_per_speaker=3, test_utts_per_speaker=3,
                           sessions_per_speaker=2, min_duration=1.0, max_duration=1.5, musan_files_per_category=4,
                           musan_duration=2.0, babble_talkers=4, rirs_per_room=1, nonspeech_files=2)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small synthetic corpus (read-only for tests: copy before modifying)."""
    return make_mini_corpus(tmp_path_factory.mktemp("corpus"), TINY_SPEC)


def run_module(module: str, *args: str, cwd: Path | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` the way run.sh does; returns the completed process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def kill_when(module: str, argv: list, ready: Callable[[], bool], extra_delay: float = 0.0, timeout: float = 240,
              env: dict | None = None) -> None:
    """Start ``python -m module argv`` and SIGKILL it once ``ready()`` holds (plus ``extra_delay`` seconds).

    The stage must still be running at the kill, so every kill test really interrupts work.
    """
    env = env or dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", module, *map(str, argv)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"{module} ended before the kill point:\n{proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{module}: kill point not reached in {timeout} s")
        time.sleep(0.005)
    time.sleep(extra_delay)
    if proc.poll() is not None:
        raise AssertionError(f"{module} ended before the kill:\n{proc.stderr.read()[-3000:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


TRAIN_SPEC = MiniCorpusSpec(seed=11, dev_speakers=6, test_speakers=3, dev_utts_per_speaker=4, test_utts_per_speaker=3,
                            sessions_per_speaker=2, min_duration=0.8, max_duration=1.2, musan_files_per_category=4,
                            musan_duration=1.5, babble_talkers=4, rirs_per_room=1, nonspeech_files=2)


@pytest.fixture(scope="session")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stage-1 output of a small corpus for training tests: dev/test dirs, MUSAN halves, RIRs, nonspeech."""
    from nawsv.data.prepare import PrepareConfig, prepare_flat_bank, prepare_musan, prepare_speaker_set

    root = tmp_path_factory.mktemp("train_data")
    corpus = make_mini_corpus(root / "corpus", TRAIN_SPEC)
    cfg = PrepareConfig(nj=1, shards=True, shard_size=8)
    data = root / "data"
    prepare_speaker_set(corpus["voxceleb"] / "dev" / "wav", data / "dev", cfg)
    prepare_speaker_set(corpus["voxceleb"] / "test" / "wav", data / "test", cfg, [("O", corpus["trials"])])
    prepare_musan(corpus["musan"], data, cfg)
    prepare_flat_bank(corpus["rirs"], data / "rirs", "rir", cfg)
    prepare_flat_bank(corpus["nonspeech"], data / "nonspeech", "nonspeech", cfg)
    return {"root": data, "dev": data / "dev", "test": data / "test", "musan_train": data / "musan_train",
            "musan_test": data / "musan_test", "rirs": data / "rirs", "nonspeech": data / "nonspeech"}


TINY_WARMUP = """
ssl: {preset: tiny, adapter_dim: 8, mask_time_prob: 0.1, mask_time_length: 2, mask_feature_prob: 0.05}
embed_dim: 16
data: {speakers_per_batch: 4, crop_seconds: 0.5, num_workers: 0}
augment: {prob: 1.0, types: {noise: 1.0, babble: 1.0, music: 1.0, babble_music: 1.0}, babble_talkers: [1, 2]}
optim: {lr: 1.0e-3, lr_min: 1.0e-3}
run: {seed: 3, log_every_steps: 1}
epochs: 2
adapter_only_epochs: 1
diagnostics: {held_out_utts: 2}
"""

TINY_FINETUNE = """
ssl: {preset: tiny, adapter_dim: 8, mask_time_prob: 0.05, mask_time_length: 2, mask_feature_prob: 0.0}
backend: {channels: 16, embed_dim: 16}
data: {batch_size: 8, crop_seconds: 0.5, num_workers: 0}
augment: {prob: 0.6, babble_talkers: [1, 2]}
optim: {lr: 1.0e-3, lr_min: 1.0e-5, schedule: half_cosine}
run: {seed: 3, log_every_steps: 1, keep_checkpoints: 0}
epochs: 3
frozen_ssl_epochs: 1
large_margin_epochs: 1
large_margin: 0.4
large_margin_crop_seconds: 0.8
average_last: 2
"""


@pytest.fixture(scope="session")
def tiny_configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small warm-up / fine-tune YAMLs (tiny random-init WavLM, seconds per epoch)."""
    root = tmp_path_factory.mktemp("conf")
    (root / "warmup.yaml").write_text(TINY_WARMUP)
    (root / "finetune.yaml").write_text(TINY_FINETUNE)
    return {"warmup": root / "warmup.yaml", "finetune": root / "finetune.yaml"}


def reference_warmup_argv(train_data: dict, config: Path, exp: Path) -> list[str]:
    """Stage 3 as the shared reference runs it: 2 epochs (the first trains adapters only), a checkpoint after
    every step, all checkpoints kept; rerun with another ``exp`` to reproduce it."""
    return ["warmup", "--config", str(config), "--train_data", str(train_data["dev"]), "--musan",
            str(train_data["musan_train"]), "--exp_dir", str(exp), "--device", "cpu", "--override", "epochs=2",
            "--override", "adapter_only_epochs=1", "--override", "run.checkpoint_every_steps=1",
            "--override", "run.keep_checkpoints=0"]


@dataclasses.dataclass(frozen=True)
class ReferenceWarmup:
    """A finished warm-up experiment and how long it trained after its first checkpoint (for random kills)."""

    exp: Path
    seconds_after_first_checkpoint: float


@pytest.fixture(scope="session")
def reference_warmup(train_data: dict, tiny_configs: dict, tmp_path_factory: pytest.TempPathFactory
                     ) -> ReferenceWarmup:
    """The one uninterrupted tiny warm-up (``reference_warmup_argv``) shared by every test that needs a trained
    student: kill/resume comparisons, the freeze schedule, fine-tuning from it (read-only: copy before rerunning)."""
    exp = tmp_path_factory.mktemp("reference_warmup") / "exp"
    proc = subprocess.Popen([sys.executable, "-m", "nawsv.bin.train",
                             *reference_warmup_argv(train_data, tiny_configs["warmup"], exp)],
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first_checkpoint = exp / "checkpoints" / "step_0_1.json"
    while not first_checkpoint.exists() and proc.poll() is None:
        time.sleep(0.005)
    begin = time.time()
    stderr = proc.communicate()[1]
    assert proc.returncode == 0, stderr[-3000:]
    return ReferenceWarmup(exp, time.time() - begin)
