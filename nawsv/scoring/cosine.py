"""Cosine scoring of trial lists: whole-utterance, segment-pair mean, and their average ("full").

The segment-pair score of the paper is the mean of the N x M cosines between the enrol and test segment
embeddings. Because ``mean_ij cos(a_i, b_j) = dot(mean_i a_i/|a_i|, mean_j b_j/|b_j|)``, each utterance is
reduced once to its *segment direction* (the mean of its unit-length segment embeddings, not renormalised)
and a trial costs one dot product instead of N x M.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from nawsv.formats.kaldi import Trial
from nawsv.scoring.embeddings import MatrixTable, VectorTable
from nawsv.utils.errors import DataError

TRIAL_CHUNK = 1 << 16     # trials scored per numpy call: bounds the gathered (chunk x dim) temporaries


@dataclasses.dataclass(frozen=True)
class TrialIndex:
    """A trial list resolved to row positions in one embedding table."""

    enrol: np.ndarray            # int64 row of the enrol utterance, per trial
    test: np.ndarray             # int64 row of the test utterance, per trial

    def __len__(self) -> int:
        return int(self.enrol.size)


def trial_labels(trials: Sequence[Trial]) -> np.ndarray | None:
    """Boolean target labels, or None for an unlabelled list."""
    if trials and trials[0].target is None:
        return None
    return np.fromiter((t.target for t in trials), dtype=bool, count=len(trials))


def index_trials(trials: Sequence[Trial], keys: dict[str, int], trials_name: str | Path,
                 scp: str | Path) -> TrialIndex:
    """Map each trial's utterances to rows; an utterance without an embedding is an error naming it."""
    try:
        enrol = np.fromiter((keys[t.enrol] for t in trials), dtype=np.int64, count=len(trials))
        test = np.fromiter((keys[t.test] for t in trials), dtype=np.int64, count=len(trials))
    except KeyError:
        missing = [u for t in trials for u in (t.enrol, t.test) if u not in keys]
        unique = list(dict.fromkeys(missing))
        raise DataError(f"trial list {trials_name}: {len(unique)} utterance(s) have no embedding in {scp}, e.g. "
                        f"{', '.join(repr(u) for u in unique[:3])}; extract embeddings for the whole test set "
                        f"(stage 5) or use the trial list that belongs to this set") from None
    return TrialIndex(enrol, test)


def unit_rows(matrix: np.ndarray, keys: Sequence[str], row_owner: np.ndarray | None, source: str | Path) -> np.ndarray:
    """Rows scaled to unit length; a zero or non-finite row is an error naming its utterance."""
    norms = np.linalg.norm(matrix, axis=1)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        owner = keys[int(row_owner[row]) if row_owner is not None else row]
        raise DataError(f"{source}: the embedding of {owner!r} is all zeros or holds NaN/inf; cosine scoring is "
                        f"undefined for it: check the extraction (stage 5) of this utterance")
    return (matrix / norms[:, None]).astype(np.float32, copy=False)


def utterance_directions(table: VectorTable) -> np.ndarray:
    """Unit-length whole-utterance embeddings (rows of ``table``)."""
    return unit_rows(table.vectors, table.keys, None, table.source)


def segment_directions(table: MatrixTable) -> np.ndarray:
    """Per utterance, the mean of its unit-length segment embeddings (dot products give segment-pair means)."""
    counts = np.diff(table.row_splits)
    owner = np.repeat(np.arange(len(table.keys)), counts)
    unit = unit_rows(table.rows, table.keys, owner, table.source)
    sums = np.add.reduceat(unit, table.row_splits[:-1], axis=0, dtype=np.float64)
    return (sums / counts[:, None]).astype(np.float32)


def pair_scores(directions: np.ndarray, index: TrialIndex) -> np.ndarray:
    """Dot product of the enrol and test rows of every trial (float32), chunked to bound memory."""
    out = np.empty(len(index), dtype=np.float32)
    for begin in range(0, len(index), TRIAL_CHUNK):
        end = begin + TRIAL_CHUNK
        out[begin:end] = np.einsum("ij,ij->i", directions[index.enrol[begin:end]],
                                   directions[index.test[begin:end]])
    return out


def full_scores(cosine: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """The paper's clean protocol: the average of whole-utterance and segment-pair cosine."""
    return ((cosine.astype(np.float64) + segment.astype(np.float64)) / 2).astype(np.float32)
