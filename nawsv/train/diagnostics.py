"""Warm-up diagnostics: is the student moving toward the teacher? Measured before the first step and after
every epoch, on utterances of training speakers held out of the warm-up (never test trials):

- ``hint_layer_<l>``: mean squared distance between the student's layer l on a noisy copy and the teacher's
  layer l on the clean copy (``hint``: their weighted sum, the hint loss without masking);
- ``cos_student``: cosine between the warm-up head's embeddings of the student on the clean and on the noisy
  copy; ``cos_teacher``: between the teacher on the clean copy and the student on the noisy one.

The noisy copies are drawn once with the warm-up's own augmentation (seeded per utterance), so every
measurement sees the same audio; everything runs in eval mode (no masking, no dropout, BatchNorm running
statistics). Values go to TensorBoard (``diagnostics/*``), train.log and ``diagnostics.tsv`` (for the report).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from nawsv.data.store import UtteranceStore, wrap_to_length
from nawsv.formats.diagnostics_record import FILE_NAME, record_diagnostics
from nawsv.utils.seeding import rng_for

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DiagnosticsConfig:
    """Stage 3 ``diagnostics`` section."""

    held_out_utts: int = 32          # one utterance from each of this many training speakers (0 disables)
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.held_out_utts < 0 or self.batch_size < 1:
            raise ValueError(f"diagnostics: need held_out_utts >= 0 and batch_size >= 1, got {self.held_out_utts} "
                             f"and {self.batch_size}")


def hold_out(store: UtteranceStore, count: int, seed: int) -> tuple[UtteranceStore, list[int]]:
    """The training store without ``count`` utterances (one each from ``count`` random speakers that keep at
    least two for training pairs), and the indices of the held-out utterances in the original store."""
    rng = rng_for(seed, "diagnostics-held-out")
    by_speaker: dict[int, list[int]] = {}
    for index, label in enumerate(store.labels.tolist()):
        by_speaker.setdefault(label, []).append(index)
    eligible = [spk for spk, members in sorted(by_speaker.items()) if len(members) >= 3]
    chosen = rng.permutation(len(eligible))[:count]
    held = sorted(int(by_speaker[eligible[i]][rng.integers(len(by_speaker[eligible[i]]))]) for i in chosen)
    if len(held) < count:
        log.warning("diagnostics: only %d speakers have 3 or more utterances; holding out %d utterances, not %d",
                    len(eligible), len(held), count)
    kept = sorted(set(range(len(store))) - set(held))
    return store.subset(kept), held


Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def held_out_audio(store: UtteranceStore, indices: list[int], samples: int, augment: Augment,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and noisy copies [N, samples]: the start of each utterance (wrap-repeated when shorter), noise
    drawn once per utterance from a seed of its key."""
    clean, noisy = [], []
    for index in indices:
        wav = wrap_to_length(store.read(index), samples)[:samples].astype(np.float32)
        clean.append(wav)
        noisy.append(np.asarray(augment(wav.copy(), rng_for(seed, "diagnostics-noise", store.keys[index])),
                                dtype=np.float32))
    return torch.from_numpy(np.stack(clean)), torch.from_numpy(np.stack(noisy))


class WarmupDiagnostics:
    """Callable ``(epoch) -> {name: value}`` for the trainer; also keeps ``diagnostics.tsv`` up to date."""

    def __init__(self, student: nn.Module, teacher: nn.Module, head: nn.Module, hint: nn.Module,
                 clean: torch.Tensor, noisy: torch.Tensor, batch_size: int, out_dir: Path | None = None) -> None:
        self.student, self.teacher, self.head, self.hint = student, teacher, head, hint
        self.clean, self.noisy = clean, noisy
        self.batch_size = batch_size
        self.path = None if out_dir is None else Path(out_dir) / FILE_NAME

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        """The diagnostics of the modules as they are now (their train/eval modes are restored after)."""
        modules = (self.student, self.teacher, self.head)
        modes = [m.training for m in modules]
        for module in modules:
            module.eval()
        device = next(self.head.parameters()).device
        try:
            sums: dict[str, float] = {}
            for start in range(0, self.clean.shape[0], self.batch_size):
                clean = self.clean[start:start + self.batch_size].to(device)
                noisy = self.noisy[start:start + self.batch_size].to(device)
                for key, value in self._batch(clean, noisy).items():
                    sums[key] = sums.get(key, 0.0) + value
        finally:
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)
        return {key: value / self.clean.shape[0] for key, value in sums.items()}

    def _batch(self, clean: torch.Tensor, noisy: torch.Tensor) -> dict[str, float]:
        """Per-utterance sums over one batch."""
        student_noisy = self.student(noisy).float()
        teacher_clean = self.teacher(clean).float()
        errors = self.hint.layer_errors(student_noisy, teacher_clean)             # [B, L]
        size = clean.shape[0]
        out = {"hint": float(self.hint(student_noisy, teacher_clean)) * size}
        out.update({f"hint_layer_{layer + 1}": float(v) for layer, v in enumerate(errors.sum(dim=0))})
        noisy_emb = self.head(student_noisy)
        cosine = nn.functional.cosine_similarity
        out["cos_student"] = float(cosine(self.head(self.student(clean).float()), noisy_emb, dim=1).sum())
        out["cos_teacher"] = float(cosine(self.head(teacher_clean), noisy_emb, dim=1).sum())
        return out

    def __call__(self, epoch: int) -> dict[str, float]:
        values = self.measure()
        log.info("diagnostics %s: hint %.4g (per layer %s), cos clean/noisy student %.4f, teacher/student %.4f",
                 "before warm-up" if epoch == 0 else f"after epoch {epoch}", values["hint"],
                 " ".join(f"{values[k]:.3g}" for k in sorted(values) if k.startswith("hint_layer_")),
                 values["cos_student"], values["cos_teacher"])
        if self.path is not None:
            record_diagnostics(self.path, epoch, values)
        return values
