"""The shared writers under every stage: atomic files and directories and the output locks, under faults."""
from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

import nawsv.utils.atomic as atomic_module
from nawsv.utils.atomic import atomic_directory, atomic_open, atomic_write_bytes, atomic_write_text
from nawsv.utils.errors import DataError, ExperimentError, OutputError
from nawsv.utils.lock import directory_lock
from tests.faults.conftest import NON_UTF8, leftovers, read_only


def test_unwritable_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    atomic_write_text(tmp_path / "out" / "a.txt", "old\n")
    with read_only(tmp_path / "out"):
        with pytest.raises(OutputError, match=rf"cannot write {tmp_path}/out/a\.txt: .*make {tmp_path}/out writable"):
            atomic_write_text(tmp_path / "out" / "a.txt", "new\n")
        with pytest.raises(OutputError, match="cannot write .*/out/sub/b.txt"):
            atomic_write_text(tmp_path / "out" / "sub" / "b.txt", "new\n")
        with pytest.raises(OutputError, match=r"cannot write .*/out/dir"):
            with atomic_directory(tmp_path / "out" / "dir"):
                pass
    assert (tmp_path / "out" / "a.txt").read_text() == "old\n" and leftovers(tmp_path) == []


@pytest.mark.parametrize("at", ["write", "flush"])
def test_full_disk_keeps_the_old_file(tmp_path: Path, disk_full, at: str) -> None:
    target = tmp_path / "scores.txt"
    atomic_write_text(target, "old\n")
    disk_full("scores.txt", at=at)
    with pytest.raises(OutputError, match=r"cannot write .*scores\.txt: No space left on device \(ENOSPC\); free"):
        atomic_write_text(target, "new\n" * 1000)
    with pytest.raises(OutputError, match="No space left"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old\n" and leftovers(tmp_path) == []


def test_other_errors_in_the_block_are_not_disguised(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        with atomic_open(tmp_path / "x.txt") as handle:
            handle.write((tmp_path / "missing_input").read_text())
    assert leftovers(tmp_path) == [] and not (tmp_path / "x.txt").exists()


def test_text_that_is_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot write .*wav\.scp: .*not valid UTF-8 \(near '.*caf\\xe9/u\.wav"):
        atomic_write_text(tmp_path / "wav.scp", f"utt /data/{NON_UTF8}/u.wav\n")
    assert leftovers(tmp_path) == [] and not (tmp_path / "wav.scp").exists()


def test_failed_directory_swap_puts_the_old_directory_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "set"
    with atomic_directory(target) as staging:
        (staging / "wav.scp").write_text("old\n")
    real_replace = os.replace
    calls = []

    def replace(source, destination):
        calls.append((Path(source).name, Path(destination).name))
        if len(calls) == 2:                            # old dir moved aside; moving the new one in fails
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real_replace(source, destination)

    monkeypatch.setattr(atomic_module.os, "replace", replace)
    with pytest.raises(OutputError, match=r"cannot write .*/set: Invalid cross-device link"):
        with atomic_directory(target) as staging:
            (staging / "wav.scp").write_text("new\n")
    monkeypatch.undo()
    assert (target / "wav.scp").read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_lock_is_removed_on_release_and_waiters_take_a_fresh_one(tmp_path: Path) -> None:
    order = []

    def waiter() -> None:
        with directory_lock(tmp_path, "merge B", name=".merge.lock", wait=True):
            order.append("B in")
            with pytest.raises(ExperimentError, match=r"in use by merge B \(pid"):
                with directory_lock(tmp_path, "third", name=".merge.lock"):
                    pass
        order.append("B out")

    with directory_lock(tmp_path, "merge A", name=".merge.lock", wait=True):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.2)
        order.append("A out")
    thread.join(10)
    assert order == ["A out", "B in", "B out"]
    assert not (tmp_path / ".merge.lock").exists()
