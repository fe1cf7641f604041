"""The warm-up section of report.md: did the student move toward the teacher? (from warmup/diagnostics.tsv)"""
from __future__ import annotations

from pathlib import Path

from nawsv.scoring.plots import plot_warmup_diagnostics
from nawsv.formats.diagnostics_record import FILE_NAME, read_diagnostics

FIGURE = "warmup_diagnostics.png"


def warmup_section(exp_dir: Path, report_dir: Path, dpi: int) -> list[str]:
    """Markdown lines (and the figure) for the warm-up diagnostics of ``exp_dir``."""
    out = ["## Warm-up diagnostics", ""]
    if not (exp_dir / "warmup").is_dir():
        return out + ["No warm-up in this experiment (a baseline fine-tuned without it).", ""]
    rows = read_diagnostics(exp_dir / "warmup" / FILE_NAME)
    if not rows:
        return out + [f"No `warmup/{FILE_NAME}` (diagnostics were off: `diagnostics.held_out_utts: 0`).", ""]
    plot_warmup_diagnostics(report_dir / FIGURE, rows, dpi)
    first, last = rows[0], rows[-1]
    out += [f"On utterances of training speakers held out of the warm-up (never test trials), measured before the "
            f"warm-up (epoch 0) and after every epoch: the hint distance between the student on a noisy copy and the "
            f"teacher on the clean copy, and cosines of the warm-up head's embeddings.", "",
            f"![warm-up diagnostics]({FIGURE})", "",
            "| epoch | hint (weighted MSE) | cos student clean/noisy | cos teacher clean/student noisy |",
            "|---|---|---|---|"]
    out += [f"| {int(row['epoch'])} | {row['hint']:.4g} | {row['cos_student']:.4f} | {row['cos_teacher']:.4f} |"
            for row in rows]
    change = "fell" if last["hint"] < first["hint"] else "did not fall"
    out += ["", f"The hint distance {change} from {first['hint']:.4g} to {last['hint']:.4g} over "
                f"{int(last['epoch'])} epoch(s).", ""]
    return out
