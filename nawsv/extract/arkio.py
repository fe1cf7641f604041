"""Kaldi ark/scp writing with kaldiio: binary float32 vectors (BFV) and matrices (BFM), atomic files.

The scp written next to an ark holds the ark's absolute path and the byte offset of each record, so it is
readable from any working directory by ``kaldiio.load_scp`` and by Kaldi (``copy-vector scp:...``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import kaldiio
import numpy as np

from nawsv.formats.kaldi import text_lines
from nawsv.utils.atomic import atomic_open, atomic_write_text
from nawsv.utils.errors import DataError


def _write_records(handle, records: Iterable[tuple[str, np.ndarray]]) -> list[tuple[str, int]]:
    """Append binary float32 records to an open ark; returns (key, offset of its data) for each."""
    offsets = []
    for key, value in records:
        start = handle.tell()
        kaldiio.save_ark(handle, {key: np.ascontiguousarray(value, dtype=np.float32)})
        offsets.append((key, start + len(key.encode("utf-8")) + 1))
    return offsets


def write_ark(path: str | Path, records: Iterable[tuple[str, np.ndarray]]) -> None:
    """An ark without scp (partial results), written atomically."""
    with atomic_open(path, "wb", encoding=None) as handle:
        _write_records(handle, records)


def write_ark_scp(ark: str | Path, scp: str | Path, records: Iterable[tuple[str, np.ndarray]]) -> int:
    """Write ``ark`` and its ``scp`` atomically; returns the record count.

    An existing scp is removed just before the new ark replaces the old one, so no reader ever pairs an old
    scp with the new ark's offsets; a run killed in between leaves no scp, which marks the set unfinished. A
    failure while records are still being produced leaves the old ark and scp untouched.
    """
    ark, scp = Path(ark), Path(scp)
    with atomic_open(ark, "wb", encoding=None) as handle:
        offsets = _write_records(handle, records)
        handle.flush()                   # a full disk shows here, while the old pair is still intact
        os.fsync(handle.fileno())
        scp.unlink(missing_ok=True)
    target = str(ark.resolve())
    atomic_write_text(scp, "".join(f"{key} {target}:{offset}\n" for key, offset in offsets))
    return len(offsets)


def read_ark(path: str | Path, keys: Sequence[str], matrix: bool) -> Iterator[tuple[str, np.ndarray]]:
    """Records of a partial ark, checked to hold exactly ``keys`` (in order) of the expected kind."""
    path = Path(path)
    expected = iter(keys)
    count = 0
    try:
        for key, value in kaldiio.load_ark(str(path)):
            want = next(expected, None)
            if key != want or value.ndim != (2 if matrix else 1) or value.dtype != np.float32:
                raise DataError(f"{path}: record {count + 1} is {key!r} {value.dtype} {value.shape}, expected "
                                f"{want!r} as a float32 {'matrix' if matrix else 'vector'}; delete the file and "
                                f"rerun the extraction")
            count += 1
            yield key, value
    except DataError:
        raise
    except Exception as exc:  # kaldiio raises many exception types on a damaged file
        raise DataError(f"{path} cannot be read ({type(exc).__name__}: {exc}); delete it and rerun") from None
    if count != len(keys):
        raise DataError(f"{path} holds {count} records, expected {len(keys)}; delete it and rerun the extraction")


def read_scp(path: str | Path) -> list[tuple[str, str]]:
    """(key, rxfile) per line of an scp."""
    pairs = []
    for _, line in text_lines(path):
        key, _, rxfile = line.partition(" ")
        pairs.append((key, rxfile.strip()))
    return pairs
