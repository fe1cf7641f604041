"""Python API: speaker embeddings and verification scores from a fine-tuned model or an export package.

    from nawsv import Verifier
    verifier = Verifier("exp/nawsv/export")            # or .../finetune/avg_model.pt, or .../finetune
    score = verifier.score("enrol.wav", "test.wav")    # cosine of whole-utterance embeddings
    result = verifier.verify("enrol.wav", "test.wav")  # score, calibrated LLR and a decision (export dirs
    result.llr, result.accept                          # that carry a calibrator; else both None)

Decisions are made at an operating point (P_target, C_miss, C_fa): accept when the LLR reaches the Bayes
threshold log(C_fa (1 - P_target) / (C_miss P_target)). The LLR comes from the calibrator that stage 8 copies
into the export package (``calibration.json``), fitted on training-set trials with the quality measures it
names (durations and SNR estimates of both recordings are measured here from the audio).

Embeddings are cut and computed exactly as stage 5 writes them (:mod:`nawsv.extract.segments`), so scores
match ``python -m nawsv.bin.score`` on the same audio.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch

from nawsv.data.audio import SAMPLE_RATE, load_audio, resample
from nawsv.extract.config import ExtractConfig, SegmentOptions, WholeOptions
from nawsv.extract.embedder import Embedder, resolve_device
from nawsv.scoring.calibration_metrics import bayes_threshold
from nawsv.scoring.calibrator import Calibrator
from nawsv.scoring.quality import UtteranceQuality, trial_features
from nawsv.scoring.snr import estimate_snr
from nawsv.utils.errors import AudioError, ExperimentError

log = logging.getLogger(__name__)

Audio = Union[str, Path, np.ndarray, torch.Tensor]
ScoreMethod = Literal["cosine", "segments", "full"]
Engine = Literal["auto", "torchscript", "eager"]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def segment_pair_mean(a: np.ndarray, b: np.ndarray) -> float:
    """The paper's segment score: mean of all N x M cosines between two sets of segment embeddings."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a @ b.T).mean())


def find_model(path: str | Path) -> tuple[str, Path]:
    """("export", dir) or ("file", avg_model.pt) for an export dir, a model file, a finetune or experiment dir."""
    from nawsv.export.package import MODEL_NAME, is_export_dir

    path = Path(path)
    if path.is_file():
        return "file", path
    if is_export_dir(path):
        return "export", path
    for candidate in (path / MODEL_NAME, path / "finetune" / MODEL_NAME):
        if candidate.is_file():
            return "file", candidate
    raise ExperimentError(f"{path} is neither a speaker model file nor a dir holding one (looked for an export "
                          f"config.yaml, {MODEL_NAME} and finetune/{MODEL_NAME}); run stage 4 or 8 first")


def as_samples(audio: Audio, sample_rate: int | None = None) -> np.ndarray:
    """Mono float32 16 kHz samples from a file path, a numpy array or a tensor (resampled when needed)."""
    if isinstance(audio, (str, Path)):
        return load_audio(audio)
    samples = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if samples.ndim != 1:
        raise AudioError(f"expected a mono waveform (1-D array), got shape {samples.shape}; mix it down or pass a "
                         f"file path")
    if samples.size == 0:
        raise AudioError("the waveform is empty")
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples.astype(np.float32) / np.float32(32768.0)
    samples = samples.astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        raise AudioError("the waveform holds NaN or infinite samples")
    if sample_rate is not None and sample_rate != SAMPLE_RATE:
        samples = resample(samples, sample_rate, SAMPLE_RATE)
    return samples


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """The prior and costs a decision is made for; accept when the LLR reaches :attr:`threshold`."""

    p_target: float = 0.01
    c_miss: float = 1.0
    c_fa: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.p_target < 1.0 or self.c_miss <= 0 or self.c_fa <= 0:
            raise ValueError(f"operating point needs 0 < p_target < 1 and positive costs, got {self}")

    @property
    def threshold(self) -> float:
        return bayes_threshold(self.p_target, self.c_miss, self.c_fa)


@dataclasses.dataclass(frozen=True)
class Verification:
    """One trial: its score; with a calibrator, the LLR, the operating point and the decision (else None)."""

    score: float
    method: str
    llr: float | None = None
    operating_point: OperatingPoint | None = None
    accept: bool | None = None
    calibrator: str | None = None          # the calibration variant, e.g. qmf_snr


class Verifier:
    """Embeds audio and scores trials with one fine-tuned NAW-SV speaker model."""

    sample_rate = SAMPLE_RATE

    def __init__(self, model: str | Path, device: str = "cpu", engine: Engine = "auto",
                 config: ExtractConfig | None = None, operating_point: OperatingPoint | None = None) -> None:
        """``model``: export dir, avg_model.pt, or a finetune/experiment dir holding it.

        ``engine`` (export dirs only): ``torchscript`` runs model.ts, ``eager`` the model file copy; ``auto``
        picks TorchScript on the CPU and the eager model elsewhere (the trace was recorded on the CPU).
        ``config`` sets the embedding protocol; by default an export dir's recorded protocol, else stage 5's.
        ``operating_point``: where :meth:`verify` decides; by default the one recorded with the calibrator.
        """
        if engine not in ("auto", "torchscript", "eager"):
            raise ValueError(f"unknown engine {engine!r}; choose from auto, torchscript, eager")
        kind, path = find_model(model)
        self.device = resolve_device(device)
        self.source = path
        self.calibrators: dict[str, Calibrator] = {}
        self.operating_point = operating_point
        protocol = config
        if kind == "export":
            from nawsv.export.package import FILES, MODEL_NAME, read_calibration_package, read_export_config

            exported = read_export_config(path)
            calibration = read_calibration_package(path)
            if calibration is not None:
                self.calibrators = {method: Calibrator.from_dict(c, str(path / "calibration.json"))
                                    for method, c in calibration["calibrators"].items()}
                self.operating_point = operating_point or OperatingPoint(**calibration["operating_point"])
            protocol = protocol or _protocol_config(exported["protocol"])
            use_script = engine == "torchscript" or (engine == "auto" and self.device.type == "cpu")
            if use_script:
                from nawsv.export.torchscript import load_torchscript

                network = load_torchscript(path / FILES["torchscript"], self.device)
            else:
                network = _load_eager(path / MODEL_NAME, self.device)
            self.embed_dim = int(exported["embed_dim"])
        else:
            if engine == "torchscript":
                raise ExperimentError(f"{path} is a model file, not an export dir: there is no TorchScript to run; "
                                      f"use engine='auto' or export it (stage 8)")
            network = _load_eager(path, self.device)
            self.embed_dim = int(network.embed_dim)
        self.protocol = protocol or ExtractConfig()
        self.embedder = Embedder(network, self.device, bf16=False)

    def embed(self, audio: Audio, segments: bool = False, sample_rate: int | None = None) -> np.ndarray:
        """Whole-utterance embedding [D]; with ``segments`` the N-segment embeddings [N, D] of stage 5."""
        samples = as_samples(audio, sample_rate)
        if segments:
            options = self.protocol.segments
            return self.embedder.segments([samples], options.samples, options.num, options.batch_size)[0]
        return self.embedder.whole([samples], self.protocol.whole.max_samples, 1)[0]

    def score(self, enrol: Audio, test: Audio, method: ScoreMethod = "cosine") -> float:
        """``cosine`` of whole-utterance embeddings, ``segments`` (mean of N x N segment cosines) or ``full``
        (their average: the paper's clean-condition score)."""
        return self._score(as_samples(enrol), as_samples(test), method)

    def verify(self, enrol: Audio, test: Audio, method: ScoreMethod = "cosine") -> Verification:
        """Score, calibrated LLR and decision at the operating point; without a calibrator for ``method`` (a
        model file, or an export made without calibration) only the score, and ``llr``/``accept`` are None."""
        a, b = as_samples(enrol), as_samples(test)
        score = self._score(a, b, method)
        calibrator = self.calibrators.get(method)
        if calibrator is None:
            return Verification(score, method)
        sides = {"enrol": a, "test": b}
        quality = UtteranceQuality(duration={k: v.size / SAMPLE_RATE for k, v in sides.items()},
                                   snr={k: estimate_snr(v, SAMPLE_RATE, key=k) for k, v in sides.items()}
                                   if any(f.startswith("snr_") for f in calibrator.features) else None)
        llr = float(calibrator.llr(trial_features(calibrator.features, np.array([score]), [("enrol", "test")],
                                                  quality))[0])
        point = self.operating_point or OperatingPoint()
        return Verification(score, method, llr, point, llr >= point.threshold, calibrator.variant)

    def _score(self, a: np.ndarray, b: np.ndarray, method: ScoreMethod) -> float:
        if method not in ("cosine", "segments", "full"):
            raise ValueError(f"unknown score method {method!r}; choose from cosine, segments, full")
        total = 0.0
        if method in ("cosine", "full"):
            total += cosine(self.embed(a), self.embed(b))
        if method in ("segments", "full"):
            total += segment_pair_mean(self.embed(a, segments=True), self.embed(b, segments=True))
        return total / 2 if method == "full" else total


def _protocol_config(protocol: dict) -> ExtractConfig:
    return ExtractConfig(segments=SegmentOptions(num=int(protocol["segments"]["num"]),
                                                 seconds=float(protocol["segments"]["seconds"])),
                         whole=WholeOptions(max_seconds=float(protocol["whole"]["max_seconds"])))


def _load_eager(path: Path, device: torch.device) -> torch.nn.Module:
    from nawsv.models.speaker import load_speaker_model

    return load_speaker_model(path, device)
