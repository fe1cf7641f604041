"""Progress bars that show on terminals and stay out of batch-job logs."""
from __future__ import annotations

from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterable[T]:
    """A tqdm bar on a TTY; silent when stderr is redirected (Slurm logs, CI)."""
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=None, leave=False, dynamic_ncols=True)
