"""Shared fixtures: a tiny synthetic corpus in the real layouts, generated once per session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nawsv.data.synthetic import MiniCorpusSpec, make_mini_corpus

ROOT = Path(__file__).resolve().parents[1]

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
