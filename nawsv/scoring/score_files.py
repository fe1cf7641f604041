"""Score files: ``enrol test score [target|nontarget]``, one trial per line in trial-list order.

Scores are written with 9 significant digits, which round-trips float32 exactly, so metrics recomputed from
a score file equal the ones stage 6 computed in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from nawsv.formats.kaldi import Trial, text_lines
from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import DataError

_LABEL = {True: "target", False: "nontarget"}


def write_scores(path: str | Path, trials: Sequence[Trial], scores: np.ndarray) -> None:
    """Write one line per trial, in the given order, atomically."""
    if len(trials) != len(scores):
        raise ValueError(f"{len(trials)} trials but {len(scores)} scores for {path}")
    values = np.asarray(scores, dtype=np.float32).tolist()
    with atomic_open(path) as handle:
        if trials and trials[0].target is None:
            handle.writelines(f"{t.enrol} {t.test} {s:.9g}\n" for t, s in zip(trials, values, strict=True))
        else:
            handle.writelines(f"{t.enrol} {t.test} {s:.9g} {_LABEL[t.target]}\n"
                              for t, s in zip(trials, values, strict=True))


def read_scores(path: str | Path) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray | None]:
    """``(pairs, scores, labels)`` of a score file; labels is None when the file has no label column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"score file {path} does not exist; run stage 6 (scoring) first")
    pairs: list[tuple[str, str]] = []
    scores: list[float] = []
    labels: list[bool] = []
    width = None
    for number, line in text_lines(path):
        fields = line.split()
        if width is None:
            width = len(fields)
        if len(fields) != width or width not in (3, 4):
            raise DataError(f"{path}:{number}: expected 'enrol test score [target|nontarget]' on every line "
                            f"(same number of fields), got {line.rstrip()!r}")
        try:
            scores.append(float(fields[2]))
        except ValueError:
            raise DataError(f"{path}:{number}: score {fields[2]!r} is not a number") from None
        if width == 4:
            if fields[3] not in ("target", "nontarget"):
                raise DataError(f"{path}:{number}: label {fields[3]!r} is not target or nontarget")
            labels.append(fields[3] == "target")
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise DataError(f"score file {path} is empty; rerun stage 6 (scoring)")
    return pairs, np.asarray(scores, dtype=np.float32), (np.asarray(labels, dtype=bool) if width == 4 else None)
