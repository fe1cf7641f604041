"""Quality measures of trials for quality-measure-function (QMF) calibration.

Per utterance: the duration (``utt2dur``), the mean of its top-N cosines to the AS-norm cohort (the impostor
mean; its own speaker excluded when it is a cohort speaker, as for calibration trials drawn from the training
set) and an SNR estimate (:mod:`nawsv.scoring.snr`, cached in ``<exp>/quality/<set>/utt2snr``). Per trial the
features of a variant are, in this order:

- ``score``: ``score``;
- ``qmf``: ``score, log_dur_enrol, log_dur_test`` (+ ``imp_mean_enrol, imp_mean_test`` when AS-norm is on);
- ``qmf_snr``: the ``qmf`` features + ``snr_enrol, snr_test`` (dB).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nawsv.data.kaldi import read_table, write_table
from nawsv.extract.loader import iterate_audio
from nawsv.scoring.asnorm import Cohort, CohortStats
from nawsv.scoring.snr import estimate_snr
from nawsv.utils.errors import DataError

log = logging.getLogger(__name__)


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


def utterance_snrs(data_dir: Path, keys: Sequence[str], cache_dir: Path) -> dict[str, float]:
    """SNR estimates (dB) of ``keys`` from the audio of ``data_dir``, kept in ``cache_dir/utt2snr`` so reruns
    and other steps reuse them (recomputed when the cache lacks a key)."""
    cache = cache_dir / "utt2snr"
    if cache.is_file():
        cached = {k: float(v) for k, v in read_table(cache).items()}
        if all(k in cached for k in keys):
            return {k: cached[k] for k in keys}
    if not (data_dir / "wav.scp").is_file() and not (data_dir / "manifest.tsv").is_file():
        raise DataError(f"{data_dir} holds no audio list (wav.scp or manifest.tsv): the SNR estimates of the "
                        f"noise-aware calibration need the audio; pass the data dir of this set")
    snrs = {key: estimate_snr(samples, key=key) for key, samples in iterate_audio(data_dir, sorted(keys), 0)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_table(cache, {k: f"{v:.3f}" for k, v in sorted(snrs.items())})
    log.info("estimated the SNR of %d utterances of %s (median %.1f dB)", len(snrs), data_dir.name,
             float(np.median(list(snrs.values()))) if snrs else math.nan)
    return snrs
