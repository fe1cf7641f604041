"""Stage 7: figures and ``report.md`` from stage 6's ``results.tsv`` and score files, beside the paper's numbers.

Writes ``<exp>/report/eer_vs_snr.png`` (EER over SNR, a line per category, a panel per trial list),
``<exp>/report/det_<trials>.png`` (DET curves: clean and every category at one SNR) and
``<exp>/report/report.md``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from nawsv.formats.kaldi import printable_path
from nawsv.protocol import RECORD_NAME, read_protocol_record, summary_lines
from nawsv.scoring.calibration_results import calibration_report_lines
from nawsv.scoring.conditions import CLEAN
from nawsv.scoring.config import ReportConfig, ScoreConfig
from nawsv.scoring.metrics import EER_DESCRIPTIONS, det_curve
from nawsv.scoring.paper_reference import (PAPER_CATEGORIES, PAPER_NUM_TRIALS, PAPER_RUNS, PAPER_SNRS, PAPER_TRIALS,
                                           SOURCE, PaperRun)
from nawsv.scoring.plots import plot_det, plot_eer_vs_snr
from nawsv.scoring.results import GridLayout, ResultRow, cells_phrase, mean_of, read_results_tsv
from nawsv.scoring.score_files import read_scores
from nawsv.scoring.stage import score_path
from nawsv.scoring.warmup_report import warmup_section
from nawsv.formats.dev_metrics import read_dev_metrics
from nawsv.utils.atomic import atomic_write_text
from nawsv.utils.config import config_from_dict, read_yaml
from nawsv.utils.lock import directory_lock

log = logging.getLogger(__name__)


def load_score_config(exp_dir: Path) -> ScoreConfig:
    """The config stage 6 ran with (``<exp>/scores/config.yaml``); defaults when it is absent."""
    path = exp_dir / "scores" / "config.yaml"
    if not path.is_file():
        log.warning("%s is missing; assuming the default stage-6 config", path)
        return ScoreConfig()
    return config_from_dict(ScoreConfig, read_yaml(path), str(path))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _comparability(name: str, num_trials: int, test_set: str) -> str:
    if num_trials != PAPER_NUM_TRIALS:
        return (f"**Not comparable.** Trial list {name} of test set {test_set} has {num_trials} trials, not the "
                f"{PAPER_NUM_TRIALS} of {PAPER_TRIALS}: it comes from a different corpus (for example the synthetic "
                f"mini corpus), so its numbers say nothing about how this system compares with the paper. The "
                f"paper's columns only show what the comparison looks like.")
    return (f"Trial list {name} has the size of {PAPER_TRIALS} ({PAPER_NUM_TRIALS} trials). Its numbers are "
            f"comparable with the paper's only if it is that list on VoxCeleb1 audio with the same model setup; the "
            f"noisy sets are synthesised with other (seeded) noise draws than the paper's unseeded ones, so noisy "
            f"cells agree at best in expectation.")


def _paper_mean(run: PaperRun, cells: set[tuple[str, int]]) -> float | None:
    """The paper's logged average over exactly ``cells``, or None when it logged no average over that set."""
    for category, value in run.category_means.items():
        if cells == {(category, s) for s in PAPER_SNRS}:
            return value
    for snr, value in run.snr_means.items():
        if cells == {(c, snr) for c in PAPER_CATEGORIES}:
            return value
    if cells == set(run.noisy):
        return run.noisy_mean_15
    return None


def comparison_table(rows: Sequence[ResultRow], score_cfg: ScoreConfig) -> list[str]:
    """Our EERs per condition beside the paper's runs, with every average named by its cells."""
    runs = PAPER_RUNS
    head = ["| condition | ours | " + " | ".join(run.label for run in runs) + " |", "|---" * (len(runs) + 2) + "|"]
    by_key = {(r.condition, r.method): 100 * r.eer for r in rows}

    def line(label: str, ours: float | None, paper: Sequence[float | str | None]) -> str:
        shown = [v if isinstance(v, str) else _fmt(v) for v in paper]
        return f"| {label} | {_fmt(ours)} | " + " | ".join(shown) + " |"

    def mean_line(label: str, cells: list[tuple[str, int]]) -> str:
        present = [cell for cell in cells if cell in grid]
        return line(label, mean_of(grid, present), [_paper_mean(run, set(present)) for run in runs])

    out = head + [
        line("clean, `full` (paper: EER_full)", by_key.get((CLEAN, "full")), [r.clean_full for r in runs]),
        line("clean, `segment` (paper: EER_clean, TTA)", by_key.get((CLEAN, "segment")),
             [r.clean_segment for r in runs])]
    method = score_cfg.noisy_method
    grid = {(r.category, r.snr): 100 * r.eer for r in rows if r.category is not None and r.method == method}
    layout = GridLayout.of(grid, score_cfg.categories, score_cfg.snrs)
    for category in layout.categories:
        for snr in layout.snrs:
            if (category, snr) in grid:
                out.append(line(f"{category} {snr} dB", grid[(category, snr)],
                                [run.noisy.get((category, snr)) for run in runs]))
    for category in layout.categories:
        out.append(mean_line(f"mean {category} ({_snr_list(layout.snrs)} dB)", [(category, s) for s in layout.snrs]))
    for snr in layout.snrs if layout.musan else ():
        out.append(mean_line(f"mean {snr} dB ({'/'.join(layout.musan)})", [(c, snr) for c in layout.musan]))
    for label, cats in layout.groups():
        cells = [(c, s) for c in cats for s in layout.snrs if (c, s) in grid]
        out.append(mean_line(f"{label}: {cells_phrase(cells, layout.categories, layout.snrs)}", cells))
    out.append(line("README claim, clean", None, [f"{r.readme_clean:.2f}" for r in runs]))
    out.append(line("README claim, noisy (its averaging is unresolved: spec section 6.3)", None,
                    [f"{r.readme_noisy:.2f}" for r in runs]))
    return out


def _snr_list(snrs: Sequence[int]) -> str:
    return "/".join(str(s) for s in snrs)


def _eer_panels(rows: Sequence[ResultRow], trial_names: Sequence[str], method: str
                ) -> list[tuple[str, dict[str, list[tuple[int, float]]], float | None]]:
    panels = []
    for name in trial_names:
        lines: dict[str, list[tuple[int, float]]] = {}
        clean = None
        for row in rows:
            if row.trials != name or row.method != method:
                continue
            if row.condition == CLEAN:
                clean = 100 * row.eer
            else:
                lines.setdefault(row.category, []).append((row.snr, 100 * row.eer))
        if lines:
            panels.append((f"{name}: {method} scoring", lines, clean))
    return panels


def _det_curves(exp_dir: Path, rows: Sequence[ResultRow], name: str, score_cfg: ScoreConfig, snr: int
                ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    wanted = [(CLEAN, score_cfg.clean_method, f"clean ({score_cfg.clean_method})")]
    if score_cfg.noisy_method != score_cfg.clean_method:
        wanted.append((CLEAN, score_cfg.noisy_method, f"clean ({score_cfg.noisy_method})"))
    conditions = {r.condition for r in rows if r.trials == name and r.snr == snr}
    wanted += [(f"{c}_{snr}", score_cfg.noisy_method, f"{c} {snr} dB ({score_cfg.noisy_method})")
               for c in score_cfg.categories if f"{c}_{snr}" in conditions]
    curves = []
    for condition, method, label in wanted:
        path = score_path(exp_dir / "scores", name, condition, method)
        if not path.is_file():
            log.warning("no score file %s; leaving %s out of the DET plot", path, label)
            continue
        _, scores, labels = read_scores(path)
        if labels is None:
            continue
        fpr, fnr, _ = det_curve(scores, labels)
        curves.append((label, fpr, fnr))
    return curves


def protocol_lines(exp_dir: Path, score_cfg: ScoreConfig) -> list[str]:
    """The protocol, the switches that differ from the released code and the EER form, for the report's top."""
    record = read_protocol_record(exp_dir / RECORD_NAME)
    lines = summary_lines(record) if record else [f"Protocol: unknown ({exp_dir / RECORD_NAME} is missing; rerun "
                                                  f"stage 6 to write it)."]
    return lines + ["", f"EER (`eer: {score_cfg.eer}`): {EER_DESCRIPTIONS[score_cfg.eer]}; the paper's EERs use the "
                        f"interpolated form (`roc_interp`).", ""]


def best_test_epoch_line(exp_dir: Path, trials: str, test_set: str) -> list[str]:
    """The best per-epoch EER on these test trials, when stage 4 evaluated them every epoch (``--dev_set``).

    The paper picked its numbers this way; it is optimistic, so it is a separate, labelled line and never
    the headline (which stays the final or averaged model).
    """
    rows = [r for r in read_dev_metrics(exp_dir / "finetune") if r["dev"] == f"{test_set}/{trials}"]
    if not rows:
        return []
    best = min(rows, key=lambda r: float(r["dev_eer"]))
    return [f"**Best epoch on the test trials (the paper's selection; optimistic):** EER {float(best['dev_eer']):.3f} "
            f"% at fine-tuning epoch {best['epoch']} of the {len(rows)} evaluated (whole-utterance cosine, the "
            f"per-epoch evaluation of `--dev_set`). The headline numbers above are the final model's.", ""]


def not_built_lines(rows: Sequence[ResultRow], score_cfg: ScoreConfig) -> list[str]:
    """Name the configured noisy categories that have no cells (e.g. no Nonspeech100 folder in stage 1)."""
    found = {r.category for r in rows if r.category is not None}
    absent = [c for c in score_cfg.categories if c not in found]
    if not found or not absent:
        return []
    return [f"No {'/'.join(absent)} cells were built (stage 2 made no such noisy sets; nonspeech needs the "
            f"Nonspeech100 folder in stage 1): the means below are over the cells that exist.", ""]


def run_report(exp_dir: Path, cfg: ReportConfig) -> str:
    """Write the figures and report.md; returns the report text."""
    rows = read_results_tsv(exp_dir / "results.tsv")
    score_cfg = load_score_config(exp_dir)
    with directory_lock(exp_dir, "stage 7 (report)", name=".report.lock"):
        return _write_report(exp_dir, cfg, rows, score_cfg)


def _write_report(exp_dir: Path, cfg: ReportConfig, rows: list[ResultRow], score_cfg: ScoreConfig) -> str:
    report_dir = exp_dir / "report"
    trial_names = list(dict.fromkeys(r.trials for r in rows))
    out = [f"# NAW-SV report: {printable_path(exp_dir.resolve().name)}", "",
           f"Our numbers come from `results.tsv` (stage 6). The paper's are EERs (%) on {PAPER_TRIALS} "
           f"({PAPER_NUM_TRIALS} trials) of WavLM-Base+ NAW-SV systems, from {SOURCE}. The paper's category "
           f"\"speech\" is our `babble`; it reports no minDCF (ours are in results.md) and no Nonspeech100 cells.",
           ""]
    out += protocol_lines(exp_dir, score_cfg) + not_built_lines(rows, score_cfg)
    panels = _eer_panels(rows, trial_names, score_cfg.noisy_method)
    if panels:
        plot_eer_vs_snr(report_dir / "eer_vs_snr.png", panels, "EER (%)", cfg.dpi)
        out += ["![EER versus SNR](eer_vs_snr.png)", ""]
        out += calibration_report_lines(exp_dir, report_dir, score_cfg, cfg.dpi)
    else:
        out += ["No noisy conditions were scored, so there is no EER-versus-SNR figure.", ""]
    for name in trial_names:
        mine = [r for r in rows if r.trials == name]
        out += [f"## Trials {name}", "", _comparability(name, mine[0].num_trials, mine[0].set_name), ""]
        out += comparison_table(mine, score_cfg)
        out += ["", f"Noisy rows use `{score_cfg.noisy_method}` scoring (the paper's noisy numbers are TTA = "
                    f"`segment`); every mean is over exactly the cells named in its row.", ""]
        clean = next((r for r in mine if r.condition == CLEAN), mine[0])
        out += best_test_epoch_line(exp_dir, name, clean.set_name)
        curves = _det_curves(exp_dir, rows, name, score_cfg, cfg.det_snr)
        if curves:
            plot_det(report_dir / f"det_{name}.png", curves, f"DET, trials {name}", cfg.dpi)
            out += [f"![DET curves of {name}](det_{name}.png)", ""]
    out += warmup_section(exp_dir, report_dir, cfg.dpi)
    text = "\n".join(out).rstrip() + "\n"
    atomic_write_text(report_dir / "report.md", text)
    return text
