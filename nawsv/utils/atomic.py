"""Atomic file and directory writes: readers never see half-written outputs.

A killed stage leaves at most a hidden temporary next to the target, never a truncated target. A write that
fails (read-only or forbidden directory, full disk, text that is not UTF-8) removes its temporary, leaves the
old target as it was and raises a one-line user error that names the target, the cause and the fix.

SIGTERM (``scancel``, a job's time limit, ``kill``) removes the temporaries of the writes in progress before the
process dies of the signal as it would have. Only SIGKILL or a crash can leave one: its name
(``.<target>.<host>+<pid>.<random>.tmp``) says which process wrote it, and :func:`sweep_stale_temporaries`,
called by a rerun, removes those of processes of this host that are gone.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator

from nawsv.utils.errors import DataError, OutputError

# errno values that, raised while the body of a write block runs, can only mean the output cannot be written
_WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}

log = logging.getLogger(__name__)
_HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)\+(?P<pid>\d+)\.[^.]+\.(?:tmp|old)$")
_in_progress: dict[Path, int] = {}         # temporaries of the writes under way -> the pid that made them


def _prefix(target: Path) -> str:
    return f".{target.name}.{_HOST}+{os.getpid()}."


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _on_sigterm(signum: int, frame: object) -> None:
    """Remove this process's temporaries, then die of SIGTERM as without the handler (exit status 143)."""
    for path, pid in list(_in_progress.items()):
        if pid == os.getpid():                 # a forked child also holds its parent's entries: not its own
            _remove(path)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _track(path: Path) -> None:
    """Remember a temporary until its write ends; install the SIGTERM clean-up where SIGTERM still kills."""
    _in_progress[path] = os.getpid()
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def _sigterm_held() -> Iterator[None]:
    """Hold SIGTERM back for a few system calls that must not be separated; it is delivered right after."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_temporaries(root: str | os.PathLike) -> list[Path]:
    """Remove the temporaries under ``root`` that processes of this host left when killed (SIGKILL, a crash).

    A temporary of a process that still runs, or of another host (which cannot be asked), is left alone, so
    this is safe while other jobs write in the same tree. Returns what was removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    stale = sorted(p for p in root.rglob(".*") if (m := _TEMPORARY.match(p.name)) and m["host"] == _HOST
                   and not _alive(int(m["pid"])))
    removed: list[Path] = []
    for path in stale:
        if not any(parent in removed for parent in path.parents):
            _remove(path)
            removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) of killed earlier runs under %s", len(removed), root)
    return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def output_error(target: str | os.PathLike, exc: OSError) -> OutputError:
    """A user error for an OSError met while writing ``target``: what failed, why, and what to do."""
    target = Path(target)
    cause = exc.strerror or str(exc)
    code = errno.errorcode.get(exc.errno or 0)
    if exc.errno in _NO_SPACE:
        fix = "free space (or quota) on that file system, or write the outputs elsewhere, then rerun"
    elif exc.errno in _NOT_ALLOWED:
        fix = f"make {target.parent} writable, or choose another output directory, then rerun"
    else:
        fix = "check the file system, then rerun"
    return OutputError(f"cannot write {target}: {cause}{f' ({code})' if code else ''}; {fix}. Existing outputs were "
                       f"left as they were")


def _encoding_error(target: Path, exc: UnicodeEncodeError) -> DataError:
    text = exc.object if isinstance(exc.object, str) else ""
    fragment = text[max(0, exc.start - 30):exc.end + 30]
    try:                                       # the bytes of a non-UTF-8 file name, shown as \xe9 escapes
        shown = os.fsencode(fragment).decode("utf-8", "backslashreplace")
    except UnicodeError:
        shown = fragment.encode("utf-8", "backslashreplace").decode("utf-8")
    return DataError(f"cannot write {target}: the text holds characters that are not valid UTF-8 (near "
                     f"'{shown}'), usually a file or directory name with non-UTF-8 bytes; rename it to UTF-8 "
                     f"(e.g. with convmv) and rerun")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` only on success."""
    target = Path(path)
    binary = "b" in mode
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise output_error(target, exc) from None
    tmp = Path(tmp_name)
    _track(tmp)
    committing = False
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            committing = True
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if committing or exc.errno in _WRITE_FAILURES:
            raise output_error(target, exc) from None
        raise
    except UnicodeEncodeError as exc:
        tmp.unlink(missing_ok=True)
        if binary:
            raise
        raise _encoding_error(target, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _in_progress.pop(tmp, None)
    _fsync_dir(target.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_text_if_changed(path: str | os.PathLike, text: str) -> bool:
    """Atomic write that leaves an identical file alone, so a rerun touches no finished record; True if written."""
    path = Path(path)
    if path.is_file() and path.read_bytes() == text.encode("utf-8"):
        return False
    atomic_write_text(path, text)
    return True


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb", encoding=None) as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it into place when the block succeeds.

    An existing directory at ``path`` stays untouched until the new one is complete; it is then
    replaced as a whole, so a reader sees either the old or the new set of files, never a mix.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise output_error(target, exc) from None
    _track(staging)
    committing = False
    try:
        yield staging
        committing = True
        os.chmod(staging, 0o755)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".old", dir=target.parent))
            retired.rmdir()
            with _sigterm_held():                    # no moment without a directory at ``target``
                os.replace(target, retired)
                try:
                    os.replace(staging, target)
                except OSError:
                    os.replace(retired, target)      # put the old directory back before reporting
                    raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if committing or exc.errno in _WRITE_FAILURES:
            raise output_error(target, exc) from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _in_progress.pop(staging, None)
    _fsync_dir(target.parent)
