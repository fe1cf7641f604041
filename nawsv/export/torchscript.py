"""TorchScript of the speaker model by tracing: one graph for any batch size and any waveform length.

Tracing records the operations of one forward pass. The WavLM + ECAPA forward has no data-dependent
control flow (frame counts and relative-position buckets are computed from tensor sizes, which the tracer
records symbolically), so the trace generalises across lengths; :func:`nawsv.export.package.export_model`
verifies this on two other lengths and batch sizes before writing anything. The trace is recorded on the
CPU and holds CPU device constants (WavLM's relative-position ``arange`` is traced with ``device="cpu"``), so
it runs on the CPU only: loading it for another device is refused here with a clear message (the Python API
uses the eager model copy or ONNX on GPUs), and the export's config.yaml records ``torchscript_device: cpu``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from nawsv.export.tracing import quiet_tracing
from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import ExperimentError

TRACED_DEVICE = "cpu"


def trace_model(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace ``model`` (eval mode) on ``example`` [B, T]; the expected tracer warnings are hidden."""
    model.eval()
    with quiet_tracing(), torch.no_grad():
        return torch.jit.trace(model, example, check_trace=False)


def save_torchscript(module: torch.jit.ScriptModule, path: str | Path) -> None:
    """Write the module atomically (through a Python handle, so a full disk is reported like any other write)."""
    with warnings.catch_warnings(), atomic_open(path, "wb", encoding=None) as handle:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.jit.save(module, handle)


def load_torchscript(path: str | Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load an exported module; a missing, truncated or foreign file is an ExperimentError naming it."""
    if torch.device(device).type != TRACED_DEVICE:
        raise ExperimentError(f"TorchScript model {path} runs on the CPU only (it was traced there and holds CPU "
                              f"device constants), not on {device}; use engine='eager' (the default off the CPU) "
                              f"or the ONNX export on a GPU")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            module = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExperimentError(f"TorchScript model {path} cannot be read ({reason}); rerun stage 8 (export)"
                                  ) from None
    module.eval()
    return module
