"""Seeds derived from names, so that random choices do not depend on job splits or ordering."""
from __future__ import annotations

import hashlib
import random

import numpy as np


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from the string forms of ``parts`` (stable across processes and Python runs)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def rng_for(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded from ``parts`` (e.g. global seed, condition, utterance key)."""
    return np.random.default_rng(stable_seed(*parts))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (when imported) global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)
