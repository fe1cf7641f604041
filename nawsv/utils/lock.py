"""Exclusive locks on output directories, so two runs never write into the same one.

Locks are advisory ``flock`` locks on a small file that holds the holder's description (stage, pid, host) for
the message a second run gets. The file is removed when the holder is done; a killed holder leaves it behind,
but its ``flock`` dies with the process, so the next run takes it over: there are no stale locks.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import IO, Iterator

from nawsv.utils.atomic import output_error
from nawsv.utils.errors import ExperimentError


def _open_locked(directory: Path, path: Path, wait: bool) -> IO:
    """Open and ``flock`` the lock file; retry when the previous holder removed it meanwhile."""
    while True:
        try:
            handle = open(path, "a+")
        except OSError as exc:
            raise output_error(path, exc) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ExperimentError(f"{directory} is in use by {holder} (lock file {path}); wait for it to finish "
                                  f"or use another output directory (two runs must not write into one directory)"
                                  ) from None
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


def sibling_lock(target: str | Path, what: str) -> contextlib.AbstractContextManager[None]:
    """Lock ``<parent>/.<name>.lock`` for an output (file or directory) that is replaced as a whole."""
    target = Path(target)
    return directory_lock(target.parent, what, name=f".{target.name}.lock")
