"""Learning-rate schedules as pure functions of the epoch, so a resumed run needs no scheduler state."""
from __future__ import annotations

import math


def learning_rate(epoch: int, epochs: int, lr: float, lr_min: float, schedule: str) -> float:
    """LR of 0-based ``epoch``.

    ``constant``: ``lr`` throughout (the warm-up's effective schedule, spec §3.4).
    ``half_cosine``: ``lr_min + (lr - lr_min)(1 + cos(pi*epoch/epochs))/2``, one half period over the run, stepped
    per epoch as the original fine-tuning (e.g. 5e-5 -> 8.3e-6 at epoch 20 of 27).
    """
    if schedule == "constant":
        return lr
    if schedule == "half_cosine":
        return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs))
    raise ValueError(f"unknown schedule {schedule!r}; choose from ['constant', 'half_cosine']")
