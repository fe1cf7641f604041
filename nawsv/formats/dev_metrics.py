"""Per-epoch dev metrics kept beside the training outputs (``dev_metrics.tsv``), import-light for the report."""
from __future__ import annotations

import logging
from pathlib import Path

from nawsv.utils.atomic import write_text_if_changed

log = logging.getLogger(__name__)
DEV_METRICS = "dev_metrics.tsv"
DEV_COLUMNS = ("epoch", "dev", "dev_eer", "dev_mindcf_0.01")


def record_dev_metrics(out_dir: Path, epoch: int, name: str, values: dict[str, float]) -> None:
    """Add (or replace, on a resumed epoch) one epoch's dev metrics in ``<out_dir>/dev_metrics.tsv``.

    The report reads it: when the dev list is a test list, its best epoch is shown as the paper's (optimistic)
    selection, beside -- never instead of -- the headline model.
    """
    rows = {int(r["epoch"]): r for r in read_dev_metrics(out_dir)}
    rows[epoch] = {"epoch": str(epoch), "dev": name, "dev_eer": f"{values['dev_eer']:.6f}",
                   "dev_mindcf_0.01": f"{values['dev_mindcf_0.01']:.6f}"}
    lines = ["\t".join(DEV_COLUMNS)] + ["\t".join(rows[e][c] for c in DEV_COLUMNS) for e in sorted(rows)]
    write_text_if_changed(out_dir / DEV_METRICS, "\n".join(lines) + "\n")


def read_dev_metrics(out_dir: Path) -> list[dict[str, str]]:
    """Rows of ``dev_metrics.tsv`` (empty when there is none or it is not one)."""
    path = Path(out_dir) / DEV_METRICS
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].split("\t")) != DEV_COLUMNS:
        log.warning("%s does not start with the header %s; ignoring it", path, " ".join(DEV_COLUMNS))
        return []
    return [dict(zip(DEV_COLUMNS, line.split("\t"), strict=True)) for line in lines[1:] if line]
