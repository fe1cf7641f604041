"""Atomic writes leave either the old or the new content, never a partial file or directory."""
from pathlib import Path

import pytest

from nawsv.utils.atomic import atomic_directory, atomic_open, atomic_write_text


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
