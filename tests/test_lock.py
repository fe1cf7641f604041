"""The experiment-directory lock refuses a second run and vanishes with the process; file systems without
flock get a one-line error naming the lock file, or run unlocked with NAWSV_FILE_LOCKING=false."""
import errno
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nawsv.utils.errors import ConfigError, ExperimentError
from nawsv.utils import lock
from nawsv.utils.lock import directory_lock, file_lock


def test_second_holder_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from nawsv.utils.lock import directory_lock\n"
        "with directory_lock(%r, 'stage 3'):\n"
        "    print('locked', flush=True); time.sleep(30)\n") % (str(Path(__file__).parents[1]), str(tmp_path))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExperimentError, match=r"in use by stage 3 \(pid \d+"):
            with directory_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    with directory_lock(tmp_path):              # the killed holder left no stale lock
        pass


@pytest.fixture
def no_flock(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A file system without flock (Lustre without -o flock): every lock request fails with ENOLCK."""
    calls: list[str] = []

    def refuse(handle, operation: int) -> None:
        calls.append(handle.name)
        if operation & fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", refuse)
    return calls


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS])
def test_file_system_without_flock_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        code: int) -> None:
    def refuse(handle, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", refuse)
    (tmp_path / "other").write_text("x")
    for lock, path in ((directory_lock(tmp_path, "stage 2", name=".a.lock", wait=True), tmp_path / ".a.lock"),
                       (file_lock(tmp_path / "other"), tmp_path / "other")):
        with pytest.raises(ExperimentError) as caught:
            with lock:
                pytest.fail("the block ran without its lock")
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"cannot lock {path}: {os.strerror(code)} ({errno.errorcode[code]})")
        assert "NAWSV_FILE_LOCKING=false" in message and "flock" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]      # the lock file it created is gone


def test_locking_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_flock: list[str]) -> None:
    monkeypatch.setenv("NAWSV_FILE_LOCKING", "false")
    (tmp_path / "stamp").write_text("x")
    warnings: list[str] = []
    monkeypatch.setattr(lock.log, "warning", lambda text, *args: warnings.append(text % args))
    lock._warn_unlocked.cache_clear()
    with directory_lock(tmp_path / "new", "stage 5"), file_lock(tmp_path / "stamp"):
        entered = True
    assert entered and no_flock == []                                    # no flock was even tried
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["new", "stamp"]  # and no lock file written
    assert len(warnings) == 1 and "file locking is off (NAWSV_FILE_LOCKING=false)" in warnings[0]   # said once
    monkeypatch.setenv("NAWSV_FILE_LOCKING", "maybe")
    with pytest.raises(ConfigError, match="NAWSV_FILE_LOCKING='maybe': expected true or false"):
        with directory_lock(tmp_path):
            pass


def test_locking_on_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_flock: list[str]) -> None:
    monkeypatch.delenv("NAWSV_FILE_LOCKING", raising=False)
    with pytest.raises(ExperimentError, match="cannot lock"):
        with directory_lock(tmp_path):
            pass
    monkeypatch.setenv("NAWSV_FILE_LOCKING", "true")
    with pytest.raises(ExperimentError, match="cannot lock"):
        with directory_lock(tmp_path):
            pass
    assert len(no_flock) == 2
