"""Progress bars that show on terminals and stay out of batch-job logs."""
from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterable[T]:
    """A tqdm bar on a TTY; silent when stderr is redirected (Slurm logs, CI)."""
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=None, leave=False, dynamic_ncols=True)


def progress_bar(total: int, desc: str, initial: int = 0, disable: bool = False) -> tqdm:
    """A manual tqdm bar (``update``/``set_postfix``); hidden off-TTY and on non-main ranks."""
    return tqdm(total=total, initial=initial, desc=desc, disable=True if disable else None, leave=False,
                dynamic_ncols=True)
