"""Adaptive symmetric score normalisation (AS-norm), as in WeSpeaker's ``score_norm`` (method asnorm).

Cohort: one embedding per training speaker, the mean of that speaker's unit-length embeddings. For every
enrol and test utterance, its cosines to all cohort speakers are computed once (not once per trial), the
``top_n`` largest are kept, and their mean and population standard deviation (ddof=0) give

    asnorm(s) = 0.5 * ((s - mean_enrol) / std_enrol + (s - mean_test) / std_test).

Work is chunked over utterances, so memory stays bounded by ``chunk x cohort`` floats whatever the list size.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from nawsv.scoring.cosine import TrialIndex, unit_rows
from nawsv.scoring.embeddings import VectorTable
from nawsv.utils.errors import DataError

log = logging.getLogger(__name__)

COHORT_SCORES_PER_CHUNK = 1 << 22     # utterance x cohort cosines held at once (16 MB of float32)


@dataclasses.dataclass(frozen=True)
class Cohort:
    """Unit-length speaker-mean embeddings of the cohort, one row per speaker (sorted by speaker id)."""

    speakers: list[str]
    directions: np.ndarray


@dataclasses.dataclass(frozen=True)
class CohortStats:
    """Mean and population std of each utterance's top-N cohort cosines (rows = embedding-table rows)."""

    mean: np.ndarray
    std: np.ndarray
    top_n: int


def speaker_cohort(table: VectorTable, utt2spk: Mapping[str, str], utt2spk_path: str | Path) -> Cohort:
    """Per-speaker means of the unit-length embeddings in ``table``; every embedding needs a speaker."""
    no_speaker = [k for k in table.keys if k not in utt2spk]
    if no_speaker:
        raise DataError(f"{len(no_speaker)} cohort embedding(s) in {table.source} have no speaker in {utt2spk_path}, "
                        f"e.g. {no_speaker[0]!r}; extract the cohort from the data dir whose utt2spk you pass")
    unit = unit_rows(table.vectors, table.keys, None, table.source)
    speakers, owner = np.unique(np.array([utt2spk[k] for k in table.keys]), return_inverse=True)
    order = np.argsort(owner, kind="stable")
    starts = np.flatnonzero(np.r_[True, owner[order][1:] != owner[order][:-1]])
    sums = np.add.reduceat(unit[order], starts, axis=0, dtype=np.float64)
    means = sums / np.bincount(owner)[:, None]
    names = [str(s) for s in speakers]
    return Cohort(names, unit_rows(means, names, None, f"cohort mean of {table.source}"))


def cohort_statistics(directions: np.ndarray, cohort: Cohort, top_n: int,
                      rows: np.ndarray | None = None) -> CohortStats:
    """Top-N cohort statistics of ``directions[rows]`` (all rows when None); other rows are left NaN."""
    size = cohort.directions.shape[0]
    if not 2 <= top_n <= size:
        raise DataError(f"AS-norm: top_n={top_n} must be between 2 and the {size} cohort speaker(s); use a larger "
                        f"cohort set or change asnorm_top_n")
    rows = np.arange(directions.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    mean = np.full(directions.shape[0], np.nan)
    std = np.full(directions.shape[0], np.nan)
    cohort_t = np.ascontiguousarray(cohort.directions.T, dtype=np.float32)
    per_chunk = max(1, COHORT_SCORES_PER_CHUNK // size)
    buffer = np.empty((min(per_chunk, rows.size), size), dtype=np.float32)   # reused: no page faults per chunk
    for begin in range(0, rows.size, per_chunk):
        chunk = rows[begin:begin + per_chunk]
        scores = np.matmul(directions[chunk], cohort_t, out=buffer[:chunk.size])
        scores.partition(size - top_n, axis=1)                              # in place: the top N end up last
        top = scores[:, size - top_n:].astype(np.float64)
        mean[chunk] = top.mean(axis=1)
        std[chunk] = top.std(axis=1)
    if (std[rows] == 0).any():
        row = int(rows[np.flatnonzero(std[rows] == 0)[0]])
        raise DataError(f"AS-norm: the top-{top_n} cohort scores of embedding row {row} are all equal (std 0); the "
                        f"cohort is degenerate: check the cohort embeddings")
    return CohortStats(mean, std, top_n)


def effective_top_n(requested: int, cohort: Cohort) -> int:
    """``requested`` capped at the cohort size (as WeSpeaker's slicing does), saying so when it caps."""
    size = len(cohort.speakers)
    if requested > size:
        log.warning("asnorm_top_n=%d exceeds the %d cohort speakers; AS-norm uses all %d", requested, size, size)
    return min(requested, size)


def asnorm_scores(raw: np.ndarray, index: TrialIndex, stats: CohortStats) -> np.ndarray:
    """Normalise raw cosine scores with the enrol and test statistics (float32 out)."""
    raw = raw.astype(np.float64)
    enrol = (raw - stats.mean[index.enrol]) / stats.std[index.enrol]
    test = (raw - stats.mean[index.test]) / stats.std[index.test]
    return (0.5 * (enrol + test)).astype(np.float32)


def trial_rows(index: TrialIndex) -> np.ndarray:
    """The embedding rows a trial list uses (statistics are needed only for those)."""
    return np.unique(np.concatenate((index.enrol, index.test)))
