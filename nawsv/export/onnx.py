"""Optional ONNX export (the ``[onnx]`` extra: onnx + onnxruntime), checked against the eager model.

Uses torch's TorchScript-based exporter with dynamic batch and sample axes (the dynamo exporter needs
onnxscript and static-shape hints that this model does not need).
"""
from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from nawsv.export.tracing import quiet_tracing
from nawsv.utils.errors import ConfigError

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "waveform", "embedding"


def require_onnx() -> None:
    """Fail early, naming the missing packages and how to get them."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"ONNX export needs {' and '.join(missing)}, which are not installed: "
                          f"pip install -e '.[onnx]' (or pip install onnx onnxruntime), or use --format torchscript")


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path) -> None:
    """Write ``model`` as ONNX with dynamic (batch, samples) input and (batch) output axes."""
    require_onnx()
    options = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    model.eval()
    with quiet_tracing(), torch.no_grad():
        torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch", 1: "samples"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, **options)


def onnx_runner(path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A CPU onnxruntime session as a [B, T] -> [B, D] function (for the export check)."""
    require_onnx()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(wav: torch.Tensor) -> torch.Tensor:
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: wav.numpy().astype(np.float32)})
        return torch.from_numpy(out)

    return run
