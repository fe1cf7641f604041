"""Build ``exp/<name>/export/``: everything needed to embed audio without the training setup.

Contents (the directory is built under a temporary name and swapped in whole):

- ``avg_model.pt``: the fine-tuned model file (hard link when possible, else a copy);
- ``model.ts``: the traced TorchScript module, waveform [B, T] float32 16 kHz -> embedding [B, D];
- ``model.onnx`` (``--format onnx|both``, needs the ``[onnx]`` extra): the same graph for onnxruntime;
- ``calibration.json`` (when the experiment has calibrators, :mod:`nawsv.scoring.calibration_stage`): the
  score-to-LLR calibrator of each API score method (the configured decision variant) and the default
  operating point, so that :class:`nawsv.api.Verifier` returns LLRs and decisions;
- ``config.yaml``: sample rate, embedding dim, the stage-5 protocol (whole-utterance cap, segments), the
  model source and sha256, the calibration's sha256, the nawsv/torch/transformers versions and the measured
  export checks.

Every exported graph is compared with the eager model on two waveform lengths (and two batch sizes) other
than the tracing example before anything is written; a mismatch is an error, never a silent export.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from nawsv import __version__
from nawsv.data.audio import SAMPLE_RATE
from nawsv.export.onnx import export_onnx, onnx_runner, require_onnx
from nawsv.export.torchscript import TRACED_DEVICE, save_torchscript, trace_model
from nawsv.extract.config import ExtractConfig
from nawsv.extract.stamp import file_sha256
from nawsv.utils.atomic import atomic_directory, atomic_write_text
from nawsv.utils.errors import ConfigError, DataError, ExperimentError
from nawsv.utils.lock import sibling_lock
from nawsv.utils.records import read_record

log = logging.getLogger(__name__)

EXPORT_FORMAT = "nawsv.export.v1"
CONFIG_NAME = "config.yaml"
MODEL_NAME = "avg_model.pt"
FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
CALIBRATION_NAME = "calibration.json"
CALIBRATION_FORMAT = "nawsv.export.calibration.v1"
API_METHODS = {"cosine": "cosine", "segments": "segment", "full": "full"}   # Verifier method -> scoring method
FORMATS = {"torchscript": ("torchscript",), "onnx": ("onnx",), "both": ("torchscript", "onnx")}
TRACE_SECONDS = 3.0                       # the tracing example
CHECK_SHAPES = ((1, 27_200), (2, 68_800))   # (batch, samples): 1.7 s and 4.3 s, both unlike the example
TOLERANCE = 1e-4                          # max |exported - eager| relative to max(1, max |eager|)


def _waveforms(shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [0.1 * torch.randn(*shape, generator=generator) for shape in shapes]


def check_export(name: str, eager: Callable[[torch.Tensor], torch.Tensor],
                 exported: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """Largest relative deviation of ``exported`` from ``eager`` over :data:`CHECK_SHAPES`; error above tolerance."""
    worst = 0.0
    with torch.inference_mode():
        for wav in _waveforms(CHECK_SHAPES):
            reference = eager(wav)
            result = exported(wav)
            if result.shape != reference.shape:
                raise ExperimentError(f"{name} export returns shape {tuple(result.shape)} for input "
                                      f"{tuple(wav.shape)}, the model {tuple(reference.shape)}; the export is "
                                      f"unusable (please report this); use avg_model.pt with nawsv.api.Verifier")
            scale = max(1.0, float(reference.abs().max()))
            worst = max(worst, float((result - reference).abs().max()) / scale)
    if worst > TOLERANCE:
        raise ExperimentError(f"{name} export differs from the model by {worst:.3g} (relative) on inputs of "
                              f"{[s for s in CHECK_SHAPES]} (batch, samples); the graph does not generalise to "
                              f"other lengths: use avg_model.pt with nawsv.api.Verifier instead")
    return worst


def read_export_config(directory: str | Path) -> dict[str, Any]:
    """The ``config.yaml`` of an export dir, validated."""
    path = Path(directory) / CONFIG_NAME
    data = read_record(path, f"a nawsv export config (format {EXPORT_FORMAT!r})", "rerun stage 8 (export)",
                       lambda d: d.get("format") == EXPORT_FORMAT)
    if data is None:
        raise DataError(f"{path} does not exist; {directory} is not an export dir (run stage 8)")
    return data


def is_export_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file() and (Path(path) / MODEL_NAME).is_file()


def calibration_package(calibrators_path: Path, operating_point: dict[str, float] | None = None) -> str:
    """The ``calibration.json`` text: per API score method, the decision variant's calibrator of the experiment
    (``<exp>/calibration/calibrators.json``) and the default operating point (p_target, c_miss, c_fa)."""
    from nawsv.scoring.calibrator import load_calibrators

    calibrators, info = load_calibrators(calibrators_path)
    variant = info.get("decision_variant", "score")
    chosen = {api: calibrators[method][variant].to_dict() for api, method in API_METHODS.items()
              if variant in calibrators.get(method, {})}
    if not chosen:
        raise DataError(f"{calibrators_path} holds no {variant!r} calibrator of the methods the API scores "
                        f"({', '.join(API_METHODS.values())}); rerun the calibration step with them")
    point = operating_point or {"p_target": float(info.get("p_target", 0.01)), "c_miss": 1.0, "c_fa": 1.0}
    return json.dumps({"format": CALIBRATION_FORMAT, "variant": variant, "operating_point": point,
                       "calibrators": chosen, "source": info}, indent=1, sort_keys=True) + "\n"


def read_calibration_package(directory: str | Path) -> dict | None:
    """The export dir's ``calibration.json`` (None when the package has no calibrator)."""
    path = Path(directory) / CALIBRATION_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable calibration ({exc}); rerun stage 8 (export)") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise DataError(f"{path} is not a {CALIBRATION_FORMAT} file; rerun stage 8 (export)")
    return data


def _text_sha256(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def _up_to_date(out_dir: Path, sha256: str, formats: Sequence[str], protocol: dict,
                calibration: str | None = None) -> bool:
    if not is_export_dir(out_dir):
        return False
    try:
        old = read_export_config(out_dir)
    except DataError:
        return False
    return (old.get("model", {}).get("sha256") == sha256 and old.get("protocol") == protocol
            and old.get("calibration_sha256") == _text_sha256(calibration)
            and all((out_dir / FILES[f]).is_file() and f in old.get("files", {}) for f in formats))


def _link_or_copy(source: Path, target: Path) -> str:
    try:
        os.link(source, target)
        return "hard link"
    except OSError:
        shutil.copy2(source, target)
        return "copy"


def _config(model: torch.nn.Module, source: Path, sha256: str, protocol: dict, checks: dict[str, float],
            calibration: str | None = None) -> dict:
    import transformers

    return {
        "format": EXPORT_FORMAT,
        "nawsv_version": __version__,
        "torch_version": str(torch.__version__),
        "transformers_version": str(transformers.__version__),
        "sample_rate": SAMPLE_RATE,
        "embed_dim": int(model.embed_dim),
        "input": "float32 waveform [batch, samples], 16 kHz mono, no normalisation; batch only equal lengths",
        "output": "float32 [batch, embed_dim]: raw back-end embedding (length-normalise for cosine scoring)",
        "protocol": protocol,
        "random_init_ssl": bool(getattr(model.ssl, "random_init", False)),
        "model": {"file": MODEL_NAME, "source": str(source.resolve()), "sha256": sha256},
        "files": {name: FILES[name] for name in checks},
        "calibration_sha256": _text_sha256(calibration),
        "torchscript_device": TRACED_DEVICE,
        "checks": {name: {"inputs_batch_samples": [list(s) for s in CHECK_SHAPES], "max_relative_diff": diff}
                   for name, diff in checks.items()},
    }


def protocol_of(cfg: ExtractConfig) -> dict:
    """The stage-5 protocol recorded in the export (so the API embeds exactly as stage 5 does)."""
    return {"whole": {"max_seconds": cfg.whole.max_seconds},
            "segments": {"num": cfg.segments.num, "seconds": cfg.segments.seconds}}


def export_model(model_path: str | Path, out_dir: str | Path, fmt: str = "torchscript",
                 cfg: ExtractConfig | None = None, calibrators: str | Path | None = None) -> Path:
    """Write (or keep, when up to date) the export dir of ``model_path``; returns its config path.
    ``calibrators``: the experiment's ``calibration/calibrators.json``, carried as ``calibration.json``."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {sorted(FORMATS)}")
    formats = FORMATS[fmt]
    if "onnx" in formats:
        require_onnx()
    source, out_dir = Path(model_path), Path(out_dir)
    if not source.is_file():
        raise ExperimentError(f"--model {source} does not exist; run the fine-tuning stage (4) first")
    cfg = cfg or ExtractConfig()
    calibration = None if calibrators is None else calibration_package(Path(calibrators))
    with sibling_lock(out_dir, "stage 8 (export)"):
        return _export(source, out_dir, formats, cfg, calibration)


def _export(source: Path, out_dir: Path, formats: Sequence[str], cfg: ExtractConfig,
            calibration: str | None) -> Path:
    from nawsv.models.speaker import load_speaker_model

    sha256, protocol = file_sha256(source), protocol_of(cfg)
    if _up_to_date(out_dir, sha256, formats, protocol, calibration):
        log.info("%s is up to date with %s (sha256 %s...); skipped", out_dir, source, sha256[:12])
        return out_dir / CONFIG_NAME
    model = load_speaker_model(source, "cpu")
    example = _waveforms([(1, round(TRACE_SECONDS * SAMPLE_RATE))])[0]
    with atomic_directory(out_dir) as staging:
        how = _link_or_copy(source, staging / MODEL_NAME)
        checks: dict[str, float] = {}
        if "torchscript" in formats:
            traced = trace_model(model, example)
            checks["torchscript"] = check_export("TorchScript", model, traced)
            save_torchscript(traced, staging / FILES["torchscript"])
        if "onnx" in formats:
            export_onnx(model, example, staging / FILES["onnx"])
            checks["onnx"] = check_export("ONNX", model, onnx_runner(staging / FILES["onnx"]))
        if calibration is not None:
            atomic_write_text(staging / CALIBRATION_NAME, calibration)
        config = _config(model, source, sha256, protocol, checks, calibration)
        atomic_write_text(staging / CONFIG_NAME, yaml.safe_dump(config, sort_keys=False))
    log.info("exported %s to %s (%s; model %s; max relative deviation %s)", source, out_dir,
             ", ".join(FILES[f] for f in formats), how, {k: f"{v:.2g}" for k, v in checks.items()})
    return out_dir / CONFIG_NAME
