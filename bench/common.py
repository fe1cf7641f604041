"""Shared pieces of the benchmarks: figures, timing, peak memory, result files."""
from __future__ import annotations

import dataclasses
import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass
class Figure:
    """One measured number, optionally compared with a reference or target."""

    name: str
    value: float
    unit: str
    reference: float | None = None       # the number we compare with (same unit)
    target: str = ""                     # the goal in words, e.g. ">= 20x faster"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.reference in (None, 0) or self.value == 0:
            return None
        return self.reference / self.value if self.unit == "s" else self.value / self.reference

    def line(self) -> str:
        text = f"{self.name:<58} {self.value:>12.4g} {self.unit:<8}"
        if self.ratio is not None:
            text += f" ratio {self.ratio:8.2f}x vs {self.reference:.4g}"
        if self.target:
            text += f"  [target {self.target}]"
        if self.note:
            text += f"  ({self.note})"
        return text


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...``; afterwards ``t["s"]`` holds the wall-clock seconds."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - start


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB); run memory benchmarks in a fresh process.

    Linux's ``VmHWM`` is reset by exec; ``ru_maxrss`` is not (it keeps the forking parent's peak), so a fresh
    subprocess of a large benchmark would report its parent's memory. ``ru_maxrss`` is the fallback elsewhere.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save(name: str, figures: list[Figure]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps([dataclasses.asdict(f) | {"ratio": f.ratio} for f in figures], indent=1))
    return path


class Unavailable(RuntimeError):
    """A benchmark that cannot run on this machine (e.g. it needs CUDA); the message says what it needs."""
