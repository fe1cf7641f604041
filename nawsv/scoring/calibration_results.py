"""``<exp>/calibration.tsv`` (one row per trial list x condition x method x calibration variant) and the
calibration section of ``results.md``: Cllr, minCllr, actual DCF and calibration loss beside minDCF."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nawsv.scoring.bootstrap import percentile_interval
from nawsv.scoring.calibration_eval import CalibrationCell, act_column, loss_column
from nawsv.scoring.calibration_metrics import bayes_threshold
from nawsv.scoring.calibrator import VARIANT_DESCRIPTIONS
from nawsv.scoring.conditions import CLEAN
from nawsv.scoring.config import ScoreConfig
from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import DataError

KEY_COLUMNS = ("trials", "condition", "category", "snr", "method", "variant", "num_trials")
MISSING = "-"


def metric_columns(p_targets: Sequence[float]) -> list[str]:
    return ["cllr", "min_cllr"] + [act_column(p) for p in p_targets] + [loss_column(p) for p in p_targets]


def interval_metrics(p_targets: Sequence[float]) -> list[str]:
    """The metrics with bootstrap intervals (all but minCllr)."""
    return [m for m in metric_columns(p_targets) if m != "min_cllr"]


def write_calibration_tsv(path: Path, cells: Sequence[CalibrationCell], p_targets: Sequence[float],
                          confidence: float) -> None:
    """One tab-separated row per calibrated cell, with ``<metric>_low/_high`` interval columns; atomic."""
    bounded = interval_metrics(p_targets)
    header = list(KEY_COLUMNS) + metric_columns(p_targets) + [f"{m}_{end}" for m in bounded for end in ("low", "high")]
    with atomic_open(path) as handle:
        handle.write("\t".join(header) + "\n")
        for cell in cells:
            fields = [cell.trials, cell.condition, cell.category or MISSING, MISSING if cell.snr is None else
                      str(cell.snr), cell.method, cell.variant, str(cell.num_trials)]
            fields += [f"{cell.values[m]:.6f}" for m in metric_columns(p_targets)]
            for metric in bounded:
                fields += [f"{b:.6f}" for b in (cell.interval(metric, confidence) or (math.nan, math.nan))]
            handle.write("\t".join(fields) + "\n")


def read_calibration_tsv(path: Path) -> list[dict[str, str]]:
    """The rows of a ``calibration.tsv`` as dicts of column -> text."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc}); rerun stage 6") from None
    rows = list(csv.DictReader(lines, delimiter="\t"))
    if rows and not set(KEY_COLUMNS) <= set(rows[0]):
        raise DataError(f"{path}: the header lacks {list(KEY_COLUMNS)}; rerun stage 6")
    return rows


def _fmt(value: float, interval: tuple[float, float] | None) -> str:
    if interval is None or any(math.isnan(b) for b in interval):
        return f"{value:.4f}"
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def _mean(cells: Sequence[CalibrationCell], metric: str, confidence: float) -> str:
    value = float(np.mean([c.values[metric] for c in cells]))
    if not all(metric in c.draws for c in cells):
        return _fmt(value, None)
    return _fmt(value, percentile_interval(np.mean([c.draws[metric] for c in cells], axis=0), confidence))


def _table(groups: Mapping[str, list[CalibrationCell]], columns: list[tuple[str, str]], confidence: float) -> list[str]:
    lines = ["| variant | " + " | ".join(label for _, label in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for variant, cells in groups.items():
        lines.append(f"| {variant} | " + " | ".join(_mean(cells, m, confidence) for m, _ in columns) + " |")
    return lines


def calibration_markdown(cells: Sequence[CalibrationCell], cfg: ScoreConfig, info: Mapping) -> str:
    """Per trial list: clean (``clean_method``) and the mean over the noisy cells (``noisy_method``) of each
    calibration variant; Cllr, minCllr, actual DCF beside minDCF, and the calibration loss."""
    p_targets, confidence = cfg.p_targets, cfg.bootstrap.confidence
    thresholds = ", ".join(f"{bayes_threshold(p, cfg.c_miss, cfg.c_fa):.3f} at p={p:g}" for p in p_targets)
    out = ["## Calibration: scores to log-likelihood ratios", "",
           f"- calibrators fitted on trials of the training subset {info.get('calib_set')} (no test speaker), "
           f"conditions {', '.join(info.get('conditions', []))}, seed {info.get('seed')}, prior-weighted logistic "
           f"regression at p_fit = {info.get('p_fit')} (`<exp>/calibration/`)",
           f"- actDCF: decisions at the Bayes threshold of the LLR ({thresholds}); loss = actDCF - minDCF (0 for "
           f"perfect calibration); Cllr and minCllr (PAV) in bits; minCllr has no interval",
           "- variants: " + "; ".join(f"`{v}` = {VARIANT_DESCRIPTIONS[v]}"
                                      for v in dict.fromkeys(c.variant for c in cells)), ""]
    for name in dict.fromkeys(c.trials for c in cells):
        mine = [c for c in cells if c.trials == name]
        clean = {}
        noisy = {}
        for cell in mine:
            if cell.condition == CLEAN and cell.method == cfg.clean_method:
                clean.setdefault(cell.variant, []).append(cell)
            elif cell.condition != CLEAN and cell.method == cfg.noisy_method:
                noisy.setdefault(cell.variant, []).append(cell)
        if clean:
            columns = [(f"mindcf_{p:g}", f"minDCF({p:g})") for p in p_targets]
            columns += [(act_column(p), f"actDCF({p:g})") for p in p_targets]
            columns += [("cllr", "Cllr"), ("min_cllr", "minCllr")]
            out += [f"### Trials {name}: clean, `{cfg.clean_method}` scoring", ""] + _table(clean, columns, confidence)
            out += [""]
        if noisy:
            count = len(next(iter(noisy.values())))
            columns = [(act_column(p), f"actDCF({p:g})") for p in p_targets]
            columns += [(loss_column(p), f"loss({p:g})") for p in p_targets]
            columns += [("cllr", "Cllr"), ("min_cllr", "minCllr")]
            out += [f"### Trials {name}: mean over the {count} noisy cells, `{cfg.noisy_method}` scoring", ""]
            out += _table(noisy, columns, confidence) + [""]
    return "\n".join(out).rstrip() + "\n"


def actdcf_panels(rows: Sequence[Mapping[str, str]], method: str, p_target: float
                  ) -> list[tuple[str, dict[str, list[tuple[int, float]]], float | None]]:
    """Panels of :func:`nawsv.scoring.plots.plot_eer_vs_snr` for actual DCF: one per trial list and variant."""
    panels = []
    column = act_column(p_target)
    for name in dict.fromkeys(r["trials"] for r in rows):
        for variant in dict.fromkeys(r["variant"] for r in rows if r["trials"] == name):
            lines: dict[str, list[tuple[int, float]]] = {}
            clean = None
            for row in rows:
                if row["trials"] != name or row["variant"] != variant or row["method"] != method:
                    continue
                if row["condition"] == CLEAN:
                    clean = float(row[column])
                else:
                    lines.setdefault(row["category"], []).append((int(row["snr"]), float(row[column])))
            if lines:
                panels.append((f"{name}: {method}, {variant}", lines, clean))
    return panels


def calibration_report_lines(exp_dir: Path, report_dir: Path, cfg: ScoreConfig, dpi: int) -> list[str]:
    """The actual-DCF-versus-SNR figure of the report (nothing when stage 6 had no calibrators)."""
    from nawsv.scoring.plots import plot_eer_vs_snr

    path = exp_dir / "calibration.tsv"
    if not path.is_file():
        return ["No calibration.tsv (stage 6 ran without calibrators), so there is no actual-DCF figure.", ""]
    p_target = cfg.p_targets[0]
    panels = actdcf_panels(read_calibration_tsv(path), cfg.noisy_method, p_target)
    if not panels:
        return []
    plot_eer_vs_snr(report_dir / "actdcf_vs_snr.png", panels, f"actual DCF ({p_target:g})", dpi)
    return [f"Actual DCF at p_target {p_target:g} (decisions at the Bayes threshold of the calibrated LLR) versus SNR, "
            f"per calibration variant; Cllr, minCllr and the calibration loss are in results.md and calibration.tsv.",
            "", "![Actual DCF versus SNR](actdcf_vs_snr.png)", ""]
