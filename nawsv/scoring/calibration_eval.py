"""Calibrated metrics of one scored cell (trial list x condition x method x calibration variant).

The calibrators of ``<exp>/calibration/calibrators.json`` turn the cell's scores (and quality measures) into
LLRs; the cell gets Cllr, minCllr, the actual DCF at every operating point and the calibration loss actDCF -
minDCF, with bootstrap draws from the same resamples as its EER/minDCF (so loss draws pair actDCF and minDCF of
one resampled population, and means over cells pair like every other mean). minCllr has no interval: its PAV
per resample would cost more than all the rest.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nawsv.scoring.bootstrap import Draws, Replicates, TrialUnits, percentile_interval, resample_statistic
from nawsv.scoring.calibration_metrics import act_dcf, cllr, min_cllr
from nawsv.scoring.calibrator import Calibrator, load_calibrators
from nawsv.scoring.quality import UtteranceQuality, read_quality, trial_features
from nawsv.utils.errors import DataError

log = logging.getLogger(__name__)

CALIBRATORS_NAME = "calibrators.json"


def calibration_dir(exp_dir: Path) -> Path:
    """``<exp>/calibration``: the calibration trials, manifest and calibrators."""
    return exp_dir / "calibration"


def act_column(p: float) -> str:
    return f"actdcf_{p:g}"


def loss_column(p: float) -> str:
    return f"loss_{p:g}"


@dataclasses.dataclass(frozen=True)
class CalibrationCell:
    """Calibrated metrics of one cell: ``values[metric]`` and, with the bootstrap, ``draws[metric]``."""

    trials: str
    condition: str
    category: str | None
    snr: int | None
    method: str
    variant: str
    num_trials: int
    values: dict[str, float]
    draws: dict[str, np.ndarray]

    def interval(self, metric: str, confidence: float) -> tuple[float, float] | None:
        found = self.draws.get(metric)
        return None if found is None else percentile_interval(found, confidence)


def cell_metrics(llr: np.ndarray, scores: np.ndarray, labels: np.ndarray, p_targets: Sequence[float], c_miss: float,
                 c_fa: float, min_dcf: Mapping[float, float], replicates: Replicates | None = None,
                 resamples: tuple[TrialUnits, Draws] | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Values and bootstrap draws of Cllr, minCllr, actDCF(p) and loss(p) of one cell (values also repeat
    minDCF(p), so tables can show it beside actDCF)."""
    values = {"cllr": float(cllr(llr, labels)), "min_cllr": min_cllr(scores, labels)}
    for p in p_targets:
        values[act_column(p)] = float(act_dcf(llr, labels, p, c_miss, c_fa))
        values[loss_column(p)] = values[act_column(p)] - min_dcf[p]
        values[f"mindcf_{p:g}"] = min_dcf[p]
    draws: dict[str, np.ndarray] = {}
    if resamples is not None and replicates is not None:
        units, all_draws = resamples
        draws["cllr"] = resample_statistic(lambda w: cllr(llr, labels, w), labels, units, all_draws)[0]
        for p in p_targets:
            draws[act_column(p)] = resample_statistic(lambda w, p=p: act_dcf(llr, labels, p, c_miss, c_fa, w),
                                                      labels, units, all_draws)[0]
            draws[f"mindcf_{p:g}"] = replicates.draws(f"mindcf_{p:g}")
            draws[loss_column(p)] = draws[act_column(p)] - draws[f"mindcf_{p:g}"]
    return values, draws


@dataclasses.dataclass(frozen=True)
class LoadedCalibration:
    """The calibrators of an experiment and where they came from."""

    calibrators: dict[str, dict[str, Calibrator]]
    info: dict
    path: Path


def load_experiment_calibration(path: Path) -> LoadedCalibration | None:
    """The calibrators at ``path`` (None, with a warning, when the calibration step has not run)."""
    if not path.is_file():
        log.warning("no calibrators at %s: results without Cllr and actual DCF (run python -m nawsv.bin.calibrate, "
                    "stage 6 of run.sh does)", path)
        return None
    calibrators, info = load_calibrators(path)
    return LoadedCalibration(calibrators, info, path)


def calibrated_llrs(calibrators: Mapping[str, Calibrator], scores: np.ndarray, pairs: Sequence[tuple[str, str]],
                    quality_dir: Path, impostor_mean: Mapping[str, float] | None) -> dict[str, np.ndarray]:
    """LLRs of one method's scores under each variant whose quality measures exist (the others are skipped
    with a warning naming what is missing)."""
    keys = sorted({k for pair in pairs for k in pair})
    out = {}
    for variant, calibrator in calibrators.items():
        try:
            quality = UtteranceQuality()
            if len(calibrator.features) > 1:
                quality = read_quality(quality_dir, keys, any(f.startswith("snr_") for f in calibrator.features))
            quality = dataclasses.replace(quality, impostor_mean=impostor_mean)
            out[variant] = calibrator.llr(trial_features(calibrator.features, scores, pairs, quality))
        except DataError as exc:
            log.warning("calibration variant %s skipped: %s", variant, exc)
    return out
