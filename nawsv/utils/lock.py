"""An exclusive lock on an experiment directory, so two runs never write into the same one."""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

from nawsv.utils.errors import ExperimentError


@contextlib.contextmanager
def directory_lock(directory: str | Path, what: str = "a run") -> Iterator[None]:
    """Hold ``<directory>/.lock`` for the block; a second holder gets an error naming the first.

    The lock is an advisory ``flock``: it disappears with the process, so a killed run never leaves a
    stale lock behind.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ExperimentError(f"{directory} is in use by {holder}; wait for it to finish or use another "
                              f"experiment directory (two runs must not write into one directory)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{what} (pid {os.getpid()} on {socket.gethostname()})\n")
    handle.flush()
    try:
        yield
    finally:
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
