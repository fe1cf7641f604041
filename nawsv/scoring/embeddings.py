"""Fast loading of Kaldi ark/scp embeddings into numpy (the per-key kaldiio loop is slow at 145k utterances).

Binary float32 records (``BFV`` vectors, ``BFM`` matrices, the layout kaldiio and Kaldi write) are parsed
with vectorised numpy reads at the offsets the scp gives; every other record (double precision, compressed,
text mode, scp entries with slices or pipes) goes through kaldiio, so nothing readable is refused.

Binary layout of one record at its scp offset (little-endian int32 sizes, each preceded by the byte 4)::

    \\0 B F V <sp> \\4 <dim:int32> <dim float32>                     vector
    \\0 B F M <sp> \\4 <rows:int32> \\4 <cols:int32> <rows*cols float32>  matrix
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Literal

import numpy as np

from nawsv.formats.kaldi import text_lines
from nawsv.utils.errors import DataError

_GATHER_ELEMENTS = 1 << 22          # floats gathered per numpy call: bounds the temporary index arrays
_VECTOR_HEADER = 10                  # \0B + "FV " + \4 + int32
_MATRIX_HEADER = 15                  # \0B + "FM " + \4 + int32 + \4 + int32


@dataclasses.dataclass
class _Keyed:
    keys: list[str]
    source: Path

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Key -> row position (scp order)."""
        return {key: i for i, key in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)


@dataclasses.dataclass
class VectorTable(_Keyed):
    """One float32 vector per utterance, rows in scp order."""

    vectors: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


@dataclasses.dataclass
class MatrixTable(_Keyed):
    """One float32 matrix per utterance, stacked: utterance i owns rows ``row_splits[i]:row_splits[i+1]``."""

    rows: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0), np.float32))
    row_splits: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1, np.int64))

    def matrix(self, i: int) -> np.ndarray:
        return self.rows[self.row_splits[i]:self.row_splits[i + 1]]


@dataclasses.dataclass
class _Scp:
    """The lines of an scp: key and rxfile per record (record i is on line i + 1)."""

    path: Path
    keys: list[str]
    rxfiles: list[str]

    def where(self, i: int) -> str:
        return f"{self.path}:{i + 1}"


def _read_scp_lines(scp: Path) -> _Scp:
    if not scp.is_file():
        raise DataError(f"embedding list {scp} does not exist; run stage 5 (extraction) for this set first")
    keys: list[str] = []
    rxfiles: list[str] = []
    for number, line in text_lines(scp):
        fields = line.split(None, 1)
        if len(fields) != 2:
            raise DataError(f"{scp}:{number}: expected 'key ark_path:offset', got {line.rstrip()!r}")
        keys.append(fields[0])
        rxfiles.append(fields[1].strip())
    if not keys:
        raise DataError(f"embedding list {scp} is empty; rerun stage 5 (extraction) for this set")
    if len(set(keys)) != len(keys):
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in first:
                raise DataError(f"{scp}:{i + 1}: duplicate key {key!r} (first on line {first[key] + 1}); "
                                f"every utterance must have exactly one embedding")
            first[key] = i
    return _Scp(scp, keys, rxfiles)


def _ark_offset(rxfile: str) -> tuple[str, int] | None:
    """``path:offset`` -> (path, offset); None for rxfiles only kaldiio understands (slices, pipes, ...)."""
    path, colon, offset = rxfile.rpartition(":")
    if not colon or not offset.isdigit() or not path or "|" in rxfile or "[" in rxfile or path.startswith("ark:"):
        return None
    return path, int(offset)


def _uint32_at(buf: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Little-endian int32 size fields at each (possibly unaligned) byte position."""
    raw = buf[positions[:, None] + np.arange(4)]
    return raw.astype(np.int64) @ np.array([1, 1 << 8, 1 << 16, 1 << 24], dtype=np.int64)


def _gather_rows(buf: np.ndarray, row_starts: np.ndarray, dest_rows: np.ndarray, out: np.ndarray) -> None:
    """Copy one row of ``out.shape[1]`` little-endian float32 values from each byte position into ``out``."""
    cols = out.shape[1]
    per_call = max(1, _GATHER_ELEMENTS // cols)
    for shift in range(4):
        selected = np.flatnonzero(row_starts % 4 == shift)
        if selected.size == 0:
            continue
        floats = np.frombuffer(buf, dtype="<f4", count=(buf.size - shift) // 4, offset=shift)
        for begin in range(0, selected.size, per_call):
            chunk = selected[begin:begin + per_call]
            first = (row_starts[chunk] - shift) // 4
            out[dest_rows[chunk]] = floats[first[:, None] + np.arange(cols)]


@dataclasses.dataclass
class _Records:
    """Shape and location of every record: float32 data in an ark, or an array kaldiio returned."""

    rows: np.ndarray           # rows per record (1 for a vector)
    cols: np.ndarray           # columns per record
    matrix: np.ndarray         # bool: the record is a matrix
    data_start: np.ndarray     # byte offset of the float32 data in its ark
    ark: np.ndarray            # index into the list of arks; -1 for records read by kaldiio
    fallback: dict[int, np.ndarray]


def _open_ark(path: str, scp: _Scp, i: int) -> np.ndarray:
    ark = Path(path)
    if not ark.is_file():
        raise DataError(f"{scp.where(i)}: ark file {ark} for key {scp.keys[i]!r} does not exist (relative paths "
                        f"are resolved from the current directory, as in Kaldi); rerun stage 5 or fix the scp")
    if ark.stat().st_size == 0:
        raise DataError(f"{scp.where(i)}: ark file {ark} is empty; rerun stage 5 (extraction)")
    return np.memmap(ark, dtype=np.uint8, mode="r")


def _load_with_kaldiio(scp: _Scp, i: int) -> np.ndarray:
    import kaldiio

    try:
        value = np.asarray(kaldiio.load_mat(scp.rxfiles[i]))
    except Exception as exc:  # kaldiio raises many exception types for unreadable records
        raise DataError(f"{scp.where(i)}: cannot read the embedding of {scp.keys[i]!r} from {scp.rxfiles[i]!r} "
                        f"({type(exc).__name__}: {exc}); the ark may be truncated or corrupt: rerun stage 5") from None
    if value.ndim not in (1, 2):
        raise DataError(f"{scp.where(i)}: the embedding of {scp.keys[i]!r} has shape {value.shape}; expected a "
                        f"vector or a matrix")
    return value.astype(np.float32, copy=False)


def _truncated(scp: _Scp, i: int, path: str, size: int) -> DataError:
    return DataError(f"{scp.where(i)}: the record of {scp.keys[i]!r} runs past the end of {path} ({size} bytes): "
                     f"the ark is truncated (a killed extraction?); rerun stage 5")


def _locate_in_ark(buf: np.ndarray, path: str, offsets: np.ndarray, members: np.ndarray, scp: _Scp
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check the binary headers at ``offsets``; return (fast, is_matrix, rows, cols, data_start) per record."""
    short = offsets + _VECTOR_HEADER > buf.size
    if short.any():
        raise _truncated(scp, int(members[np.flatnonzero(short)[0]]), path, buf.size)
    header = buf[offsets[:, None] + np.arange(6)]
    binary_float = ((header[:, 0] == 0) & (header[:, 1] == ord("B")) & (header[:, 2] == ord("F"))
                    & (header[:, 4] == ord(" ")) & (header[:, 5] == 4))
    is_vector = binary_float & (header[:, 3] == ord("V"))
    is_matrix = binary_float & (header[:, 3] == ord("M"))
    if (is_matrix & (offsets + _MATRIX_HEADER > buf.size)).any():
        bad = np.flatnonzero(is_matrix & (offsets + _MATRIX_HEADER > buf.size))[0]
        raise _truncated(scp, int(members[bad]), path, buf.size)
    is_matrix[is_matrix] &= buf[offsets[is_matrix] + 10] == 4
    rows = np.ones(offsets.size, np.int64)
    cols = _uint32_at(buf, offsets + 6)
    if is_matrix.any():
        rows[is_matrix] = cols[is_matrix]
        cols[is_matrix] = _uint32_at(buf, offsets[is_matrix] + 11)
    fast = is_vector | is_matrix
    data_start = offsets + np.where(is_matrix, _MATRIX_HEADER, _VECTOR_HEADER)
    overrun = fast & (data_start + rows * cols * 4 > buf.size)
    if overrun.any():
        raise _truncated(scp, int(members[np.flatnonzero(overrun)[0]]), path, buf.size)
    return fast, is_matrix, rows, cols, data_start


def _locate_records(scp: _Scp) -> tuple[_Records, list[np.ndarray]]:
    n = len(scp.keys)
    records = _Records(rows=np.ones(n, np.int64), cols=np.zeros(n, np.int64), matrix=np.zeros(n, bool),
                       data_start=np.zeros(n, np.int64), ark=np.full(n, -1, np.int64), fallback={})
    by_ark: dict[str, tuple[list[int], list[int]]] = {}
    for i, rxfile in enumerate(scp.rxfiles):
        located = _ark_offset(rxfile)
        if located is None:
            records.fallback[i] = _load_with_kaldiio(scp, i)
        else:
            members, offsets = by_ark.setdefault(located[0], ([], []))
            members.append(i)
            offsets.append(located[1])
    buffers: list[np.ndarray] = []
    for path, (member_list, offset_list) in by_ark.items():
        members = np.asarray(member_list, dtype=np.int64)
        buf = _open_ark(path, scp, int(members[0]))
        fast, is_matrix, rows, cols, data_start = _locate_in_ark(buf, path, np.asarray(offset_list, np.int64),
                                                                 members, scp)
        chosen = members[fast]
        records.rows[chosen], records.cols[chosen] = rows[fast], cols[fast]
        records.matrix[chosen], records.data_start[chosen] = is_matrix[fast], data_start[fast]
        records.ark[chosen] = len(buffers)
        buffers.append(buf)
        for i in members[~fast].tolist():
            records.fallback[i] = _load_with_kaldiio(scp, i)
    for i, value in records.fallback.items():
        records.matrix[i] = value.ndim == 2
        records.rows[i], records.cols[i] = value.shape if value.ndim == 2 else (1, value.shape[0])
    return records, buffers


def _assemble(scp: _Scp, kind: Literal["vector", "matrix"]) -> tuple[np.ndarray, np.ndarray]:
    """All records stacked row-wise as float32, and the first row of each record (plus the total)."""
    records, buffers = _locate_records(scp)
    wrong_kind = records.matrix != (kind == "matrix")
    if wrong_kind.any():
        i = int(np.flatnonzero(wrong_kind)[0])
        found, wanted = ("matrix", "vectors") if kind == "vector" else ("vector", "matrices")
        raise DataError(f"{scp.where(i)}: the embedding of {scp.keys[i]!r} is a {found}, but {scp.path.name} must "
                        f"hold {wanted} (xvector.scp: one vector per utterance; xvector_seg.scp: one matrix of "
                        f"segment embeddings per utterance)")
    dim = int(records.cols[0])
    other_dim = records.cols != dim
    if other_dim.any():
        i = int(np.flatnonzero(other_dim)[0])
        raise DataError(f"{scp.where(i)}: the embedding of {scp.keys[i]!r} has dimension {int(records.cols[i])} but "
                        f"the first one ({scp.keys[0]!r}) has {dim}; all embeddings of a set must come from one model")
    empty = (records.rows == 0) | (records.cols == 0)
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise DataError(f"{scp.where(i)}: the embedding of {scp.keys[i]!r} is empty; rerun stage 5 (extraction)")
    row_splits = np.concatenate(([0], np.cumsum(records.rows)))
    out = np.empty((int(row_splits[-1]), dim), dtype=np.float32)
    for ark_id, buf in enumerate(buffers):
        chosen = np.flatnonzero(records.ark == ark_id)
        counts = records.rows[chosen]
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        row_starts = np.repeat(records.data_start[chosen], counts) + within * (dim * 4)
        _gather_rows(buf, row_starts, np.repeat(row_splits[chosen], counts) + within, out)
    for i, value in records.fallback.items():
        out[row_splits[i]:row_splits[i + 1]] = value.reshape(-1, dim)
    return out, row_splits


def read_vector_scp(scp: str | Path) -> VectorTable:
    """All vectors of an ``xvector.scp`` as one (utterances x dim) float32 matrix in scp order."""
    lines = _read_scp_lines(Path(scp))
    out, _ = _assemble(lines, "vector")
    return VectorTable(keys=lines.keys, source=lines.path, vectors=out)


def read_matrix_scp(scp: str | Path) -> MatrixTable:
    """All matrices of an ``xvector_seg.scp`` (segment embeddings), stacked row-wise in scp order."""
    lines = _read_scp_lines(Path(scp))
    out, row_splits = _assemble(lines, "matrix")
    return MatrixTable(keys=lines.keys, source=lines.path, rows=out, row_splits=row_splits)
