"""Quiet tracing: the warnings that TorchScript tracing and the ONNX exporter print for this model are
expected, and the export checks the traced graph numerically instead (see :mod:`nawsv.export.package`).

- TracerWarning: shape checks become constants; the graph is verified on other lengths and batch sizes.
- InstanceNorm "train=True" under eval export: ECAPA's input InstanceNorm keeps no running statistics, so
  it always normalises with the input's own statistics, in training and in eval alike.
- transformers' ``loss_type`` warning: tracing reads every property of the WavLM module, including its
  unused language-model ``loss_function``.
- Deprecation notices of ``torch.jit`` (TorchScript still works in the supported torch range).
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    logger = logging.getLogger("transformers")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*operator 'instance_norm' is set to train=True.*")
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.*deprecated.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        logger.setLevel(previous)
