"""Training checkpoints: atomic, checksummed, versioned; the latest good one is found on resume.

A checkpoint is ``<name>.pt`` plus a ``<name>.json`` sidecar written after it (format version, size,
sha256). A file without a matching sidecar -- killed mid-write, truncated, edited -- is not trusted:
:func:`latest_good_checkpoint` skips it with a warning and falls back to the previous good one.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from nawsv.utils.atomic import atomic_write_bytes, atomic_write_text
from nawsv.utils.errors import ExperimentError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME = re.compile(r"^(epoch|step)_(\d+)(?:_(\d+))?\.pt$")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def nonfinite_tensors(value: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors inside ``value`` (nested dicts/lists) that hold NaN or inf."""
    if isinstance(value, torch.Tensor):
        return [prefix] if value.is_floating_point() and not bool(torch.isfinite(value).all()) else []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return []
    return [name for key, item in items for name in nonfinite_tensors(item, f"{prefix}.{key}" if prefix else str(key))]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format version) and its checksum sidecar atomically.

    A state holding NaN/inf is refused: a valid checksum would otherwise make a broken model look good and
    resumption would pick it over the last sane checkpoint.
    """
    path = Path(path)
    broken = nonfinite_tensors(state)
    if broken:
        raise ExperimentError(f"refusing to write checkpoint {path}: {len(broken)} tensor(s) hold NaN/inf "
                              f"({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}); the earlier "
                              f"checkpoints are kept. Lower the learning rate or enable optim.grad_clip_norm")
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    data = buffer.getvalue()
    sidecar = path.with_suffix(".json")
    sidecar.unlink(missing_ok=True)
    atomic_write_bytes(path, data)
    atomic_write_text(sidecar, json.dumps({"format_version": FORMAT_VERSION, "bytes": len(data),
                                           "sha256": _sha256(data)}) + "\n")
    return path


def _refuse_newer(path: Path, version: object) -> None:
    """A checkpoint of a newer format is never skipped: falling back past it would overwrite it."""
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ExperimentError(f"checkpoint {path} has format version {version}, written by a newer nawsv; this "
                              f"version reads format {FORMAT_VERSION}. Continue the experiment with the nawsv "
                              f"version that wrote it, or start a new experiment directory (nothing was changed)")


def verify_checkpoint(path: str | Path) -> str | None:
    """Return why ``path`` cannot be trusted, or None when it is intact; raise for a newer format version."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file():
        return "file is missing"
    if not sidecar.is_file():
        return "checksum sidecar is missing (the write did not finish)"
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "checksum sidecar is unreadable"
    if not isinstance(meta, dict):
        return "checksum sidecar is unreadable"
    _refuse_newer(path, meta.get("format_version"))
    if meta.get("format_version") != FORMAT_VERSION:
        return f"format version {meta.get('format_version')!r} is not {FORMAT_VERSION}"
    data = path.read_bytes()
    if len(data) != meta.get("bytes"):
        return f"size {len(data)} bytes differs from the recorded {meta.get('bytes')} (truncated?)"
    if _sha256(data) != meta.get("sha256"):
        return "checksum mismatch (corrupt)"
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a verified checkpoint; raise ExperimentError naming the file and the problem otherwise."""
    problem = verify_checkpoint(path)
    if problem:
        raise ExperimentError(f"checkpoint {path} cannot be used: {problem}; remove it to fall back to an "
                              f"earlier checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt or foreign file
        raise ExperimentError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); remove it to fall "
                              f"back to an earlier checkpoint") from None
    if not isinstance(state, dict):
        raise ExperimentError(f"checkpoint {path} is not a nawsv training checkpoint; remove it")
    _refuse_newer(Path(path), state.get("format_version"))
    return state


def recorded_digest(path: str | Path) -> str | None:
    """The sha256 recorded beside a checkpoint (ranks compare it to know they read the same file)."""
    try:
        meta = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta.get("sha256") if isinstance(meta, dict) else None


def _order(path: Path) -> tuple[int, int]:
    match = _NAME.match(path.name)
    if match.group(1) == "epoch":
        return int(match.group(2)), 0
    return int(match.group(2)), int(match.group(3) or 0)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in training order: ``epoch_N.pt`` (N epochs done), ``step_E_S.pt`` (S steps into epoch E)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    # a step checkpoint inside epoch E comes after epoch_E.pt (E epochs done) and before epoch_{E+1}.pt
    return sorted(found, key=lambda p: (_order(p)[0], 0 if p.name.startswith("epoch") else 1, _order(p)[1]))


def latest_good_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint that verifies; bad ones are reported and skipped."""
    for path in reversed(list_checkpoints(directory)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


def epoch_checkpoint_name(epochs_done: int) -> str:
    return f"epoch_{epochs_done}.pt"


def step_checkpoint_name(epoch: int, steps_done: int) -> str:
    return f"step_{epoch}_{steps_done}.pt"


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint and its sidecar (sidecar first, so a half-deleted one is never trusted)."""
    path.with_suffix(".json").unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def prune_checkpoints(directory: str | Path, keep_epochs: int) -> None:
    """Keep the newest ``keep_epochs`` epoch checkpoints (0 keeps all) and drop step checkpoints older than them."""
    paths = list_checkpoints(directory)
    epochs = [p for p in paths if p.name.startswith("epoch")]
    if not epochs:
        return
    newest_epoch = _order(epochs[-1])[0]
    for path in paths:
        if path.name.startswith("step") and _order(path)[0] < newest_epoch:
            remove_checkpoint(path)
    if keep_epochs > 0:
        for path in epochs[:-keep_epochs]:
            remove_checkpoint(path)


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors; integer buffers (e.g. BN counters) from the last state."""
    if not states:
        raise ExperimentError("no checkpoints to average")
    averaged = {}
    for key, last in states[-1].items():
        if torch.is_floating_point(last):
            stacked = torch.stack([s[key].to(torch.float64) for s in states])
            averaged[key] = stacked.mean(0).to(last.dtype)
        else:
            averaged[key] = last.clone()
    return averaged
