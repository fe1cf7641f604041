"""Quality measures of trials for quality-measure-function (QMF) calibration.

Per utterance: the duration (``utt2dur``), the mean of its top-N cosines to the AS-norm cohort (the impostor
mean; its own speaker excluded when it is a cohort speaker, as for calibration trials drawn from the training
set) and an SNR estimate (:mod:`nawsv.scoring.snr`); stage 5 writes the tables ``<exp>/quality/<set>/utt2dur`` and
``utt2snr`` (:mod:`nawsv.extract.quality`). Per trial the features of a variant are, in this order:

- ``score``: ``score``;
- ``qmf``: ``score, log_dur_enrol, log_dur_test`` (+ ``imp_mean_enrol, imp_mean_test`` in the calibrator of the
  asnorm method);
- ``qmf_snr``: the ``qmf`` features + ``snr_enrol, snr_test`` (dB).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nawsv.formats.kaldi import read_table
from nawsv.scoring.asnorm import Cohort, CohortStats
from nawsv.utils.errors import DataError


def quality_dir(exp_dir: Path, set_name: str) -> Path:
    """Where stage 5 writes the quality tables (utt2dur, utt2snr) of one set."""
    return exp_dir / "quality" / set_name


def variant_features(variant: str, with_asnorm: bool) -> tuple[str, ...]:
    """The feature names of a calibration variant (module docstring)."""
    names = ["score"]
    if variant in ("qmf", "qmf_snr"):
        names += ["log_dur_enrol", "log_dur_test"]
        if with_asnorm:
            names += ["imp_mean_enrol", "imp_mean_test"]
    if variant == "qmf_snr":
        names += ["snr_enrol", "snr_test"]
    if variant not in ("score", "qmf", "qmf_snr"):
        raise DataError(f"unknown calibration variant {variant!r}; choose from score, qmf, qmf_snr")
    return tuple(names)


@dataclasses.dataclass(frozen=True)
class UtteranceQuality:
    """Per-utterance quality measures of one condition (a measure absent where it is not needed)."""

    duration: Mapping[str, float] | None = None
    impostor_mean: Mapping[str, float] | None = None
    snr: Mapping[str, float] | None = None

    def side(self, measure: str, key: str) -> float:
        table = getattr(self, measure)
        if table is None or key not in table:
            raise DataError(f"no {measure} for utterance {key!r}; the calibrator needs it (utt2dur of the data dir, "
                            f"the AS-norm cohort, or the audio for the SNR estimate)")
        return float(table[key])


def trial_features(names: Sequence[str], scores: np.ndarray, pairs: Sequence[tuple[str, str]],
                   quality: UtteranceQuality) -> np.ndarray:
    """The feature matrix [trials, len(names)] of the named features."""
    columns = []
    for name in names:
        if name == "score":
            columns.append(np.asarray(scores, dtype=np.float64))
            continue
        measure, side = name.rsplit("_", 1)
        position = 0 if side == "enrol" else 1
        table = {"log_dur": "duration", "imp_mean": "impostor_mean", "snr": "snr"}[measure]
        value = np.array([quality.side(table, pair[position]) for pair in pairs])
        columns.append(np.log(value) if measure == "log_dur" else value)
    return np.stack(columns, axis=1)


def impostor_statistics(directions: np.ndarray, keys: Sequence[str], cohort: Cohort, top_n: int,
                        own_speaker: Mapping[str, str] | None = None) -> CohortStats:
    """Mean and population std of each row's top-N cohort cosines, leaving out the row's own speaker (from
    ``own_speaker``) when it is in the cohort, so a training utterance is normalised by impostors only."""
    scores = directions.astype(np.float32) @ cohort.directions.T.astype(np.float32)
    if own_speaker:
        column = {name: i for i, name in enumerate(cohort.speakers)}
        rows = [(row, column[own_speaker[key]]) for row, key in enumerate(keys)
                if own_speaker.get(key) in column]
        if rows:
            index = np.array(rows)
            scores[index[:, 0], index[:, 1]] = -np.inf
    available = cohort.directions.shape[0] - (1 if own_speaker else 0)
    top_n = min(top_n, available)
    if top_n < 2:
        raise DataError(f"AS-norm impostor statistics need >= 2 cohort speakers besides the utterance's own, got "
                        f"{available}")
    top = np.sort(scores, axis=1)[:, -top_n:].astype(np.float64)
    return CohortStats(top.mean(axis=1), top.std(axis=1), top_n)


def read_quality(quality_dir: Path, keys: Sequence[str], snr: bool) -> UtteranceQuality:
    """Durations (and SNR estimates when ``snr``) of ``keys`` from ``quality_dir`` (written by stage 5's
    ``python -m nawsv.bin.measure_quality``)."""
    tables = {}
    for name in ("utt2dur",) + (("utt2snr",) if snr else ()):
        path = quality_dir / name
        if not path.is_file():
            raise DataError(f"{path} does not exist: QMF calibration needs it; run python -m nawsv.bin.measure_quality "
                            f"for this set (stage 5 of run.sh does), or set calibration.variants to [score]")
        table = read_table(path)
        missing = [k for k in keys if k not in table]
        if missing:
            raise DataError(f"{path} lacks {len(missing)} utterance(s), e.g. {missing[0]!r}; rerun measure_quality")
        try:
            tables[name] = {k: float(table[k]) for k in keys}
        except ValueError as exc:
            raise DataError(f"{path}: {exc}; rerun measure_quality") from None
    return UtteranceQuality(duration=tables["utt2dur"], snr=tables.get("utt2snr"))
