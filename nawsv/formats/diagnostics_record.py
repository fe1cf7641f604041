"""``diagnostics.tsv`` of the warm-up: one row per measurement (epoch 0 = before the first step).

Kept apart from :mod:`nawsv.train.diagnostics` (which writes it) so that the report reads it without
importing torch or the training package.
"""
from __future__ import annotations

from pathlib import Path

from nawsv.utils.atomic import write_text_if_changed
from nawsv.utils.errors import DataError

FILE_NAME = "diagnostics.tsv"


def read_diagnostics(path: Path) -> list[dict[str, float]]:
    """Rows of ``diagnostics.tsv`` (``epoch`` first), oldest first; empty when there is no file."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    try:
        return [dict(zip(header, map(float, line.split("\t")), strict=True)) for line in lines[1:]]
    except ValueError:
        raise DataError(f"{path} is malformed; delete it (the next warm-up epoch rewrites it)") from None


def record_diagnostics(path: Path, epoch: int, values: dict[str, float]) -> None:
    """Add (or, on a resumed run, replace) the row of ``epoch``; atomic."""
    rows = [row for row in read_diagnostics(path) if int(row["epoch"]) != epoch]
    rows.append({"epoch": float(epoch), **values})
    rows.sort(key=lambda row: row["epoch"])
    header = ["epoch"] + sorted((k for k in values if k.startswith("hint_layer_")),
                                key=lambda k: int(k.rsplit("_", 1)[1]))
    header += [k for k in values if not k.startswith("hint_layer_")]
    lines = ["\t".join(header)]
    lines += ["\t".join(str(int(row["epoch"])) if k == "epoch" else f"{row[k]:.6g}" for k in header) for row in rows]
    write_text_if_changed(path, "\n".join(lines) + "\n")
