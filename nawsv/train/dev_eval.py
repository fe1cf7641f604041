"""Validation on a held-out dev trial list after every epoch, for monitoring -- never for picking a model.

The paper's code evaluated on the test trials every epoch and reported the best epoch; nawsv keeps model
selection away from test data (last epoch or checkpoint average) and offers this instead: a dev set (any
Kaldi dir with a labelled ``trials/<name>``, e.g. speakers held out of training) scored with the cosine of
whole-utterance embeddings, logged to TensorBoard and train.log.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nawsv.formats.kaldi import check_trials_covered, read_trials
from nawsv.data.sources import open_audio_source
from nawsv.scoring.metrics import compute_metrics
from nawsv.utils.errors import DataError

log = logging.getLogger(__name__)

Embed = Callable[[torch.Tensor], torch.Tensor]


class DevEvaluator:
    """EER and minDCF(0.01) of a dev trial list; utterances are cut to ``max_seconds`` to bound the cost."""

    def __init__(self, data_dir: str | Path, trials_name: str | None = None, max_seconds: float = 8.0) -> None:
        data_dir = Path(data_dir)
        trials_dir = data_dir / "trials"
        names = sorted(p.name for p in trials_dir.iterdir()) if trials_dir.is_dir() else []
        if trials_name is None:
            if not names:
                raise DataError(f"dev set {data_dir} has no trials/ list; stage 1 writes one with --trials NAME=PATH")
            trials_name = names[0]
        if trials_name not in names:
            raise DataError(f"dev trial list {trials_name!r} is not in {trials_dir}; available: {names}")
        self.trials = read_trials(trials_dir / trials_name)
        if any(t.target is None for t in self.trials):
            raise DataError(f"dev trial list {trials_dir / trials_name} needs target/nontarget labels")
        self.source = open_audio_source(data_dir)
        check_trials_covered(self.trials, self.source.keys(), str(trials_dir / trials_name), str(data_dir))
        self.keys = sorted({u for t in self.trials for u in (t.enrol, t.test)})
        self.max_samples = int(max_seconds * 16000)
        self.name = f"{data_dir.name}/{trials_name}"

    @torch.no_grad()
    def __call__(self, embed: Embed, device: torch.device) -> dict[str, float]:
        """Embed every dev utterance with ``embed`` (the caller sets eval mode) and score the trials."""
        vectors = {}
        for key in self.keys:
            wav = torch.from_numpy(self.source.load(key)[: self.max_samples]).to(device)
            vectors[key] = torch.nn.functional.normalize(embed(wav[None]).float(), dim=1)[0].cpu().numpy()
        scores = np.array([float(vectors[t.enrol] @ vectors[t.test]) for t in self.trials])
        labels = np.array([bool(t.target) for t in self.trials])
        metrics = compute_metrics(scores, labels, p_targets=(0.01,), source=self.name)
        return {"dev_eer": 100 * metrics.eer, "dev_mindcf_0.01": metrics.min_dcf[0.01]}
