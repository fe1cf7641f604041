"""Exclusive locks on output directories, so two runs never write into the same one.

Locks are advisory ``flock`` locks on a small file that holds the holder's description (stage, pid, host) for
the message a second run gets. The file is removed when the holder is done; a killed holder leaves it behind,
but its ``flock`` dies with the process, so the next run takes it over: there are no stale locks.

File systems without ``flock`` (Lustre mounted without ``-o flock``, NFS without a lock manager) fail the call
with ENOSYS, ENOLCK, EOPNOTSUPP or EINVAL; that is a one-line error naming the lock file and the two ways out:
a mount with ``flock`` support, or ``NAWSV_FILE_LOCKING=false`` (as ``HDF5_USE_FILE_LOCKING`` does for HDF5),
which turns every lock into a no-op, so nothing then stops two runs from writing into one directory.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import socket
from pathlib import Path
from typing import IO, Iterator

from nawsv.utils.atomic import output_error
from nawsv.utils.errors import ConfigError, ExperimentError

log = logging.getLogger(__name__)

LOCKING_VARIABLE = "NAWSV_FILE_LOCKING"


def locking_enabled() -> bool:
    """False when ``NAWSV_FILE_LOCKING`` is false/0/no/off (file systems without ``flock``)."""
    value = os.environ.get(LOCKING_VARIABLE, "true").strip().lower()
    if value in ("true", "1", "yes", "on", ""):
        return True
    if value in ("false", "0", "no", "off"):
        _warn_unlocked()
        return False
    raise ConfigError(f"{LOCKING_VARIABLE}={value!r}: expected true or false")


@functools.cache
def _warn_unlocked() -> None:
    log.warning("file locking is off (%s=false): nothing stops two runs from writing into one directory",
                LOCKING_VARIABLE)


def flock(handle: IO, path: Path, operation: int) -> None:
    """``fcntl.flock`` whose failures other than "busy" are one-line errors naming the lock file and the fix."""
    try:
        fcntl.flock(handle, operation)
    except BlockingIOError:
        raise
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "")
        raise ExperimentError(
            f"cannot lock {path}: {exc.strerror or exc}{f' ({code})' if code else ''}; the file system does not "
            f"support flock (e.g. Lustre mounted without -o flock, or NFS without a lock manager): mount it with "
            f"flock support, or set {LOCKING_VARIABLE}=false to run without locks (then nothing stops two runs from "
            f"writing into one directory)") from None


def _open_locked(directory: Path, path: Path, wait: bool) -> IO:
    """Open and ``flock`` the lock file; retry when the previous holder removed it meanwhile."""
    while True:
        created = not path.exists()
        try:
            handle = open(path, "a+")
        except OSError as exc:
            raise output_error(path, exc) from None
        try:
            flock(handle, path, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ExperimentError(f"{directory} is in use by {holder} (lock file {path}); wait for it to finish "
                                  f"or use another output directory (two runs must not write into one directory)"
                                  ) from None
        except ExperimentError:
            handle.close()
            if created:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()              # we locked a file its holder had just removed: take the new one


@contextlib.contextmanager
def directory_lock(directory: str | Path, what: str = "a run", name: str = ".lock",
                   wait: bool = False) -> Iterator[None]:
    """Hold ``<directory>/<name>`` for the block; a second holder gets an error naming the first.

    With ``wait`` a second holder blocks until the first is done instead (for short critical sections such
    as merging the parts of array jobs, where the later job must see the earlier one's result).
    """
    directory = Path(directory)
    path = directory / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from None
    if not locking_enabled():
        yield
        return
    handle = _open_locked(directory, path, wait)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{what} (pid {os.getpid()} on {socket.gethostname()})\n")
        handle.flush()
    except OSError as exc:
        with contextlib.suppress(OSError):
            handle.close()
        raise output_error(path, exc) from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()           # while still locked, so a waiter notices and takes a fresh file
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Block until holding an exclusive ``flock`` on an existing file that never moves (e.g. a stamp)."""
    path = Path(path)
    if not locking_enabled():
        yield
        return
    with open(path, "rb") as handle:
        flock(handle, path, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sibling_lock(target: str | Path, what: str) -> contextlib.AbstractContextManager[None]:
    """Lock ``<parent>/.<name>.lock`` for an output (file or directory) that is replaced as a whole."""
    target = Path(target)
    return directory_lock(target.parent, what, name=f".{target.name}.lock")
