"""Atomic writes leave either the old or the new content, never a partial file or directory."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nawsv.utils.atomic import atomic_directory, atomic_open, atomic_write_text, sweep_stale_temporaries


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "scores.txt"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.txt"]


def test_directory_swap(tmp_path: Path) -> None:
    target = tmp_path / "data"
    with atomic_directory(target) as staging:
        (staging / "wav.scp").write_text("a\n")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "wav.scp").write_text("b\n")
            raise RuntimeError("killed")
    assert (target / "wav.scp").read_text() == "a\n"
    with atomic_directory(target) as staging:
        (staging / "utt2spk").write_text("c\n")
    assert sorted(p.name for p in target.iterdir()) == ["utt2spk"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


WRITER = """
import sys, time
from pathlib import Path
from nawsv.utils.atomic import atomic_directory, atomic_open
root, ready = Path(sys.argv[1]), Path(sys.argv[2])
with atomic_directory(root / "set") as staging:
    (staging / "wav.scp").write_text("a /x.wav\\n")
    with atomic_open(root / "out.txt") as handle:
        handle.write("half")
        handle.flush()
        ready.touch()
        time.sleep(120)
"""


def start_writer(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A process in the middle of two atomic writes (a file inside a directory being built), over old outputs."""
    root = tmp_path / "out"
    root.mkdir()
    atomic_write_text(root / "out.txt", "old\n")
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(ready)],
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the writer did not start"
        time.sleep(0.02)
    assert len([p for p in root.iterdir() if p.name.startswith(".")]) == 2      # both temporaries exist
    return proc, root


def test_sigterm_removes_the_temporaries_and_still_kills(tmp_path: Path) -> None:
    """scancel sends SIGTERM: the writer dies of it (status -15, as without the clean-up) and leaves the tree as
    it was before, without hidden temporaries."""
    proc, root = start_writer(tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    assert [p.name for p in root.iterdir()] == ["out.txt"] and (root / "out.txt").read_text() == "old\n"


def test_a_rerun_sweeps_the_temporaries_of_killed_writers_only(tmp_path: Path) -> None:
    """SIGKILL cannot be caught: its temporaries stay until a sweep, which leaves those of live processes and of
    other hosts (which it cannot ask) alone."""
    proc, root = start_writer(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed = sorted(p.name for p in root.iterdir() if p.name.startswith("."))
    assert len(killed) == 2 and all(f"+{proc.pid}." in name for name in killed)
    host = re.search(r"\.([A-Za-z0-9_-]+)\+\d+\.[^.]+\.tmp$", killed[0]).group(1)      # this machine's
    live = root / f".b.txt.{host}+{os.getpid()}.abcdefgh.tmp"
    elsewhere = root / f".c.txt.another-node+{proc.pid}.abcdefgh.tmp"
    for path in (live, elsewhere):
        path.write_text("x")
    assert sorted(p.name for p in sweep_stale_temporaries(tmp_path)) == killed
    assert sorted(p.name for p in root.iterdir()) == sorted([live.name, elsewhere.name, "out.txt"])

