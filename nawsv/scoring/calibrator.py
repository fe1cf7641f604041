"""Logistic-regression calibration of scores (and quality measures) to log-likelihood ratios.

The calibrator is ``llr = w . x + b`` for a feature vector ``x`` (the score alone, or the score and quality
measures: a quality-measure function, QMF). It is fitted as in BOSARIS / the NIST SRE practice by minimising
the *prior-weighted* cross-entropy

    pi / N_tar * sum_tar log(1 + e^-(llr + logit pi)) + (1 - pi) / N_non * sum_non log(1 + e^(llr + logit pi))

whose value at the optimum is Cllr at the effective prior ``pi`` (``p_fit``): the class sizes of the
calibration trials do not matter, only ``pi`` does, and the offset ``logit pi`` makes the output an LLR (a
prior-free quantity) rather than a posterior log-odds. The problem is convex; Newton's method on
standardised features converges in a few steps.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nawsv.utils.atomic import atomic_write_text
from nawsv.utils.errors import DataError

VARIANTS = ("score", "qmf", "qmf_snr")
VARIANT_DESCRIPTIONS = {
    "score": "score only (linear score calibration)",
    "qmf": "score + log durations (+ AS-norm impostor means when asnorm is scored)",
    "qmf_snr": "qmf + the estimated SNR of both sides (noise-aware)",
}
FORMAT = "nawsv-calibrator-1"


@dataclasses.dataclass(frozen=True)
class Calibrator:
    """``llr = weights . x + bias`` over the named features (raw, unstandardised units)."""

    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    p_fit: float                       # the effective target prior of the fit
    variant: str = "score"

    def llr(self, features: np.ndarray) -> np.ndarray:
        """LLRs of feature rows [N, len(features)] (a 1-d array is a single feature: the score)."""
        x = np.asarray(features, dtype=np.float64)
        x = x[:, None] if x.ndim == 1 else x
        if x.shape[1] != len(self.features):
            raise DataError(f"calibrator {self.variant}: expected {len(self.features)} feature(s) "
                            f"{list(self.features)}, got {x.shape[1]}")
        return x @ np.asarray(self.weights) + self.bias

    def to_dict(self) -> dict:
        return {"features": list(self.features), "weights": list(self.weights), "bias": self.bias,
                "p_fit": self.p_fit, "variant": self.variant}

    @classmethod
    def from_dict(cls, data: Mapping, source: str) -> "Calibrator":
        try:
            features, weights = tuple(data["features"]), tuple(float(w) for w in data["weights"])
            made = cls(features, weights, float(data["bias"]), float(data["p_fit"]), str(data["variant"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}: not a calibrator ({exc}); rerun the calibration step") from None
        if len(features) != len(weights):
            raise DataError(f"{source}: {len(features)} features but {len(weights)} weights; rerun calibration")
        return made


def _objective(theta: np.ndarray, x: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray,
               offset: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted cross-entropy, its gradient and Hessian in ``theta`` = (weights, bias)."""
    z = x @ theta + offset
    sign = np.where(labels, -1.0, 1.0)
    loss = float(sample_weight @ np.logaddexp(0.0, sign * z))
    slope = 1.0 / (1.0 + np.exp(-z))                     # d/dz of the per-trial loss: sigmoid(z) - [target]
    grad = x.T @ (sample_weight * (slope - labels))
    hess = (x * (sample_weight * slope * (1.0 - slope))[:, None]).T @ x
    return loss, grad, hess


def fit_calibrator(features: np.ndarray, labels: np.ndarray | Sequence[bool], p_fit: float,
                   names: Sequence[str] = ("score",), variant: str = "score", max_steps: int = 100,
                   source: str = "calibration trials") -> Calibrator:
    """Fit ``llr = w . x + b`` by prior-weighted logistic regression (module docstring)."""
    x = np.asarray(features, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    labels = np.asarray(labels, dtype=bool)
    if not 0.0 < p_fit < 1.0:
        raise DataError(f"p_fit must be in (0, 1), got {p_fit}")
    if x.shape[0] != labels.size or x.shape[1] != len(names):
        raise DataError(f"{source}: {x.shape} features for {labels.size} trials and names {list(names)}")
    if not np.isfinite(x).all():
        raise DataError(f"{source}: a feature of the calibration trials is NaN or infinite ({list(names)})")
    num_tar = int(labels.sum())
    if num_tar == 0 or num_tar == labels.size:
        raise DataError(f"{source}: calibration needs target and non-target trials, got {num_tar} of {labels.size}")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    design = np.hstack([(x - mean) / scale, np.ones((x.shape[0], 1))])
    sample_weight = np.where(labels, p_fit / num_tar, (1.0 - p_fit) / (labels.size - num_tar))
    offset = math.log(p_fit / (1.0 - p_fit))
    theta = np.zeros(design.shape[1])
    loss, grad, hess = _objective(theta, design, labels, sample_weight, offset)
    for _ in range(max_steps):
        step = np.linalg.solve(hess + 1e-12 * np.eye(theta.size), grad)
        size = 1.0
        while True:                                          # backtracking keeps every step a descent step
            trial = theta - size * step
            new_loss, new_grad, new_hess = _objective(trial, design, labels, sample_weight, offset)
            if new_loss <= loss or size < 1e-8:
                break
            size /= 2.0
        theta, converged = trial, loss - new_loss < 1e-12
        loss, grad, hess = new_loss, new_grad, new_hess
        if converged:
            break
    weights = theta[:-1] / scale
    bias = float(theta[-1] - weights @ mean)
    return Calibrator(tuple(names), tuple(float(w) for w in weights), bias, p_fit, variant)


def save_calibrators(path: Path, calibrators: Mapping[str, Mapping[str, Calibrator]], info: Mapping) -> None:
    """``{method: {variant: calibrator}}`` and provenance ``info`` as JSON, atomically."""
    data = {"format": FORMAT, "info": dict(info),
            "calibrators": {method: {variant: c.to_dict() for variant, c in by_variant.items()}
                            for method, by_variant in calibrators.items()}}
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def load_calibrators(path: Path) -> tuple[dict[str, dict[str, Calibrator]], dict]:
    """The calibrators and provenance written by :func:`save_calibrators`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the calibrators ({exc}); rerun the calibration step") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} file; rerun the calibration step")
    return ({method: {variant: Calibrator.from_dict(c, f"{path} ({method}/{variant})") for variant, c in
                      by_variant.items()} for method, by_variant in data["calibrators"].items()}, data["info"])
