"""What freezing the CNN properly saves while the backbone is frozen (adapter-only warm-up epochs; issue 17).

HF's feature encoder marks its input as requiring grad in train mode, so before the fix autograd kept the CNN's
activations and ran backward through it although no CNN weight trains. The "before" case reproduces that by
letting the CNN run with grad; the "after" case is nawsv's student as it is. Memory is the size of the tensors
autograd saves for backward (exact and deterministic, unlike a process RSS), time the median of paired runs.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from bench.common import Figure
from nawsv.models.config import SSLConfig
from nawsv.models.heads import WarmupHead
from nawsv.models.ssl import build_student

BATCH, SECONDS = 4, 3.0


def _saved_bytes(step: Callable[[], torch.Tensor]) -> int:
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = step()
    loss.backward()
    return total


def _timed(step: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    step().backward()
    return time.perf_counter() - start


def frozen_cnn_figures(preset: str, repeats: int) -> list[Figure]:
    student = build_student(SSLConfig(preset=preset, layerdrop=0.0))
    student.set_backbone_trainable(False)
    student.train()
    head = WarmupHead(student.num_hidden_states, student.hidden_size)
    wav = torch.randn(BATCH, int(SECONDS * 16000), generator=torch.Generator().manual_seed(0))
    mask_rng = torch.Generator().manual_seed(1)
    cnn = student.backbone.feature_extractor

    def after() -> torch.Tensor:
        cnn._requires_grad = False
        return head(student(wav, mask=True, generator=mask_rng)).square().mean()

    def before() -> torch.Tensor:                      # the old path: CNN under grad, input marked by HF
        cnn._requires_grad = True
        original = student.cnn_trainable
        student.cnn_trainable = lambda: True
        try:
            return head(student(wav, mask=True, generator=mask_rng)).square().mean()
        finally:
            student.cnn_trainable = original

    memory = {"before": _saved_bytes(before), "after": _saved_bytes(after)}
    ratios, best = [], {"before": [], "after": []}
    _timed(after), _timed(before)
    for _ in range(repeats):
        old, new = _timed(before), _timed(after)
        best["before"].append(old)
        best["after"].append(new)
        ratios.append(new / old)
    label = f"{preset} frozen-backbone warm-up fwd+bwd ({BATCH}x{SECONDS:g}s)"
    mb = 1 / 2**20
    return [
        Figure(f"{label} saved activations", memory["after"] * mb, "MB", reference=memory["before"] * mb,
               note=f"before the fix {memory['before'] * mb:.1f} MB"),
        Figure(f"{label} time after/before", statistics.median(ratios), "x",
               note=f"median of {repeats} paired ratios; {min(best['after']):.3f} s vs {min(best['before']):.3f} s"),
    ]
