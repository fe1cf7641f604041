"""Several experiments in one table: every cell's value with its interval, and the difference of each
experiment from the first with a *paired* bootstrap interval (the same resampled speakers for both systems,
so what the systems share -- hard speakers, easy trials -- cancels out of the difference).

Experiments are compared only when they were scored on the same trial lists (same pairs and labels, checked in
the score files) in the same conditions (same condition names; the same ``condition.yaml`` recipe of each
noisy set when its data dir is still readable). Values come from each ``results.tsv`` unchanged; intervals and
differences are recomputed from the score files.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nawsv.formats.kaldi import printable_path, read_table
from nawsv.scoring.bootstrap import (Replicates, bootstrap_metrics, draws_for, mean_draws, paired_difference,
                                     percentile_interval, trial_units)
from nawsv.scoring.conditions import CLEAN, parse_condition
from nawsv.scoring.config import BootstrapConfig, ScoreConfig
from nawsv.scoring.results import GridLayout, ResultRow, read_results_tsv
from nawsv.scoring.score_files import read_scores
from nawsv.scoring.stage import score_path
from nawsv.utils.config import config_from_dict, read_yaml
from nawsv.utils.errors import DataError
from nawsv.utils.records import read_record

log = logging.getLogger(__name__)

CONFIGS = {"warm-up": "warmup/config.yaml", "fine-tune": "finetune/config.yaml", "scoring": "scores/config.yaml"}


@dataclasses.dataclass
class Experiment:
    """One experiment dir as the comparison sees it."""

    name: str
    path: Path
    rows: list[ResultRow]
    score_cfg: ScoreConfig
    configs: dict[str, dict[str, Any]]        # stage -> resolved config (absent stages left out)
    protocol: dict[str, Any] | None

    def row(self, trials: str, condition: str, method: str) -> ResultRow | None:
        return next((r for r in self.rows if (r.trials, r.condition, r.method) == (trials, condition, method)), None)


def load_experiment(path: Path, name: str) -> Experiment:
    """Read results.tsv, the stage configs and the optional protocol.yaml of ``path``."""
    if not path.is_dir():
        raise DataError(f"experiment dir {path} does not exist")
    rows = read_results_tsv(path / "results.tsv")
    configs = {stage: read_yaml(path / rel) for stage, rel in CONFIGS.items() if (path / rel).is_file()}
    score_cfg = config_from_dict(ScoreConfig, configs.get("scoring", {}), str(path / CONFIGS["scoring"]))
    protocol = read_record(path / "protocol.yaml", "a protocol record (protocol: <name>, differs_from_released: {...})",
                           "rewrite it or delete it", lambda d: "protocol" in d)
    return Experiment(name, path, rows, score_cfg, configs, protocol)


def experiment_names(paths: Sequence[Path]) -> list[str]:
    """Directory names, with parents added until they are unique."""
    for depth in range(1, 6):
        names = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


# ---- what may be compared ----

def _cells(experiment: Experiment) -> set[tuple[str, str]]:
    return {(r.trials, r.condition) for r in experiment.rows}


def check_same_conditions(experiments: Sequence[Experiment]) -> None:
    """Refuse experiments with different trial lists or conditions (one line naming the difference)."""
    first = experiments[0]
    for other in experiments[1:]:
        mine, theirs = _cells(first), _cells(other)
        if mine != theirs:
            only_first = sorted(mine - theirs)
            only_other = sorted(theirs - mine)
            detail = "; ".join(part for part in (
                f"only {first.name} has {', '.join(f'{t}/{c}' for t, c in only_first[:4])}" if only_first else "",
                f"only {other.name} has {', '.join(f'{t}/{c}' for t, c in only_other[:4])}" if only_other else "")
                if part)
            raise DataError(f"cannot compare {first.name} and {other.name}: they were scored on different trial lists "
                            f"or conditions ({detail}); rescore them on the same data (stage 6)")


def _condition_recipe(experiment: Experiment, set_name: str) -> dict[str, Any] | None:
    """The ``condition.yaml`` of the data dir a noisy embedding set was extracted from, when still readable."""
    stamp = read_record(experiment.path / "embeddings" / set_name / "extract_stamp.yaml", "an extraction stamp",
                        "rerun stage 5", lambda d: "data_dir" in d)
    if stamp is None:
        return None
    recipe = Path(stamp["data_dir"]) / "condition.yaml"
    return read_yaml(recipe) if recipe.is_file() else None


def check_same_noisy_sets(experiments: Sequence[Experiment]) -> list[str]:
    """Refuse noisy sets made with different recipes; returns the sets whose recipe could not be read."""
    first = experiments[0]
    unverified = []
    for set_name in sorted({r.set_name for r in first.rows if r.condition != CLEAN}):
        recipes = [_condition_recipe(e, set_name) for e in experiments]
        if any(r is None for r in recipes):
            unverified.append(set_name)
            continue
        for other, recipe in zip(experiments[1:], recipes[1:], strict=True):
            if recipe != recipes[0]:
                changed = sorted(k for k in set(recipe) | set(recipes[0]) if recipe.get(k) != recipes[0].get(k))
                raise DataError(f"cannot compare {first.name} and {other.name}: noisy set {set_name} was made with "
                                f"different settings ({', '.join(changed)} differ in condition.yaml); rerun stages "
                                f"2, 5 and 6 of one of them on the same noisy sets")
    return unverified


def _same_trials(experiments: Sequence[Experiment], trials: str, condition: str, method: str
                 ) -> list[tuple[list[tuple[str, str]], np.ndarray, np.ndarray]]:
    loaded = []
    for experiment in experiments:
        pairs, scores, labels = read_scores(score_path(experiment.path / "scores", trials, condition, method))
        if labels is None:
            raise DataError(f"{score_path(experiment.path / 'scores', trials, condition, method)} has no labels")
        loaded.append((pairs, scores, labels))
    pairs0, _, labels0 = loaded[0]
    for experiment, (pairs, _, labels) in zip(experiments[1:], loaded[1:], strict=True):
        if pairs != pairs0 or not np.array_equal(labels, labels0):
            where = next((i for i, (a, b) in enumerate(zip(pairs, pairs0)) if a != b), min(len(pairs), len(pairs0)))
            raise DataError(f"cannot compare {experiments[0].name} and {experiment.name}: trial list {trials} differs "
                            f"({len(pairs0)} vs {len(pairs)} trials, first difference at trial {where + 1}); score "
                            f"both on the same trial list")
    return loaded


# ---- the paired bootstrap ----

def _speaker_table(experiments: Sequence[Experiment], trials: str) -> dict[str, str]:
    tables = []
    for experiment in experiments:
        path = experiment.path / "scores" / f"{trials}.utt2spk"
        if not path.is_file():
            raise DataError(f"{path} does not exist (stage 6 writes it for the speaker bootstrap); rerun stage 6 of "
                            f"{experiment.name}, or pass --unit utterance")
        tables.append(read_table(path))
    for experiment, table in zip(experiments[1:], tables[1:], strict=True):
        if table != tables[0]:
            raise DataError(f"cannot compare {experiments[0].name} and {experiment.name}: their utt2spk of trial list "
                            f"{trials} differ (different speaker labels); score both from the same data dir")
    return tables[0]


@dataclasses.dataclass
class Comparison:
    """Replicates per (experiment index, trials, condition, method), all on the same resamples per trial list."""

    experiments: list[Experiment]
    cfg: BootstrapConfig
    replicates: dict[tuple[int, str, str, str], Replicates]
    unverified: list[str]

    def value(self, index: int, trials: str, conditions: Sequence[str], method: str, metric: str) -> float:
        """The mean over ``conditions`` of results.tsv's values (EER in percent)."""
        rows = [self.experiments[index].row(trials, c, method) for c in conditions]
        return float(np.mean([r.metric(metric) for r in rows]))

    def interval(self, index: int, trials: str, conditions: Sequence[str], method: str,
                 metric: str) -> tuple[float, float]:
        cells = [self.replicates[(index, trials, c, method)] for c in conditions]
        low, high = percentile_interval(mean_draws(cells, metric)[1], self.cfg.confidence)
        return _scaled(metric, low), _scaled(metric, high)

    def difference(self, index: int, trials: str, conditions: Sequence[str], method: str,
                   metric: str) -> tuple[float, float, float]:
        """Experiment ``index`` minus the first, from results.tsv, and the paired interval."""
        base = [self.replicates[(0, trials, c, method)] for c in conditions]
        mine = [self.replicates[(index, trials, c, method)] for c in conditions]
        _, low, high = paired_difference(base, mine, metric, self.cfg.confidence)
        value = (self.value(index, trials, conditions, method, metric)
                 - self.value(0, trials, conditions, method, metric))
        return value, _scaled(metric, low), _scaled(metric, high)


def _scaled(metric: str, value: float) -> float:
    return 100.0 * value if metric == "eer" else value


def table_cells(experiment: Experiment, trials: str) -> list[tuple[str, str]]:
    """(condition, method) cells of the comparison: clean with the clean protocol, noisy with the noisy one."""
    cfg = experiment.score_cfg
    out = []
    for row in experiment.rows:
        method = cfg.clean_method if row.condition == CLEAN else cfg.noisy_method
        if row.trials == trials and row.method == method:
            out.append((row.condition, method))
    return out


def compare(experiments: Sequence[Experiment], cfg: BootstrapConfig) -> Comparison:
    """Check that the experiments are comparable and bootstrap every table cell of every experiment."""
    if len(experiments) < 2:
        raise DataError("compare needs at least two experiment dirs")
    check_same_conditions(experiments)
    unverified = check_same_noisy_sets(experiments)
    replicates: dict[tuple[int, str, str, str], Replicates] = {}
    first = experiments[0]
    for trials in dict.fromkeys(r.trials for r in first.rows):
        cells = table_cells(first, trials)
        for experiment in experiments[1:]:
            missing = [c for c in cells if experiment.row(trials, *c) is None]
            if missing:
                raise DataError(f"cannot compare: {experiment.name} has no {missing[0][1]} result for {trials}/"
                                f"{missing[0][0]} (scored with other methods); rescore it with the methods of "
                                f"{first.name}")
        utt2spk = _speaker_table(experiments, trials) if cfg.unit == "speaker" else None
        units = draws = None
        for condition, method in cells:
            loaded = _same_trials(experiments, trials, condition, method)
            if units is None:
                units = trial_units(loaded[0][0], cfg.unit, utt2spk, source=f"{first.name} {trials}")
                draws = draws_for(units, cfg)
            for index, (experiment, (_, scores, labels)) in enumerate(zip(experiments, loaded, strict=True)):
                source = f"{experiment.name} {trials}/{condition}/{method}"
                cell = bootstrap_metrics(scores, labels, units, draws, experiment.score_cfg.p_targets,
                                         experiment.score_cfg.c_miss, experiment.score_cfg.c_fa, source,
                                         experiment.score_cfg.eer)
                _check_agrees(experiment, experiment.row(trials, condition, method), cell)
                replicates[(index, trials, condition, method)] = cell
    return Comparison(list(experiments), cfg, replicates, unverified)


def _check_agrees(experiment: Experiment, row: ResultRow, cell: Replicates) -> None:
    if not math.isclose(100 * cell.eer, 100 * row.eer, abs_tol=1e-3):
        log.warning("%s %s/%s/%s: results.tsv says EER %.4f %% but the score file gives %.4f %% "
                    "(scores rewritten after results.tsv?); the interval is of the latter",
                    experiment.name, row.trials, row.condition, row.method, 100 * row.eer, 100 * cell.eer)


# ---- output ----

def _fmt(value: float, interval: tuple[float, float], digits: int, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{value:{sign}.{digits}f} [{interval[0]:{sign}.{digits}f}, {interval[1]:{sign}.{digits}f}]"


def table_rows(comparison: Comparison, trials: str) -> list[tuple[str, list[str], str]]:
    """(label, conditions, method) of every row: clean, each noisy cell, per-category and overall means."""
    first = comparison.experiments[0]
    cells = table_cells(first, trials)
    rows = [(f"clean ({method})", [condition], method) for condition, method in cells if condition == CLEAN]
    noisy = [(condition, method) for condition, method in cells if condition != CLEAN]
    if not noisy:
        return rows
    method = noisy[0][1]
    grid = {parse_condition(c): c for c, _ in noisy}
    layout = GridLayout.of(grid, first.score_cfg.categories, first.score_cfg.snrs)
    for category in layout.categories:
        for snr in layout.snrs:
            if (category, snr) in grid:
                rows.append((f"{category} {snr} dB", [grid[(category, snr)]], method))
    for category in layout.categories:
        members = [grid[(category, s)] for s in layout.snrs if (category, s) in grid]
        rows.append((f"mean {category} ({len(members)} cells)", members, method))
    for label, cats in layout.groups():
        members = [grid[(c, s)] for c in cats for s in layout.snrs if (c, s) in grid]
        rows.append((f"**{label}, {len(members)} cells**", members, method))
    return rows


def comparison_markdown(comparison: Comparison, metric: str = "eer") -> str:
    """The comparison table(s) and what each experiment was."""
    experiments = comparison.experiments
    cfg = comparison.cfg
    label = "EER (%)" if metric == "eer" else metric.replace("mindcf_", "minDCF(") + ")"
    digits = 3 if metric == "eer" else 4
    what = "speakers" if cfg.unit == "speaker" else "utterances"
    out = [f"# Comparison: {', '.join(e.name for e in experiments)}", "",
           f"{label}. Brackets: {100 * cfg.confidence:g} % percentile bootstrap interval ({cfg.resamples} resamples of "
           f"the trial list's {what}, seed {cfg.seed}). Differences are each experiment minus {experiments[0].name}, "
           f"with a paired interval: the same resamples for both systems. A difference whose interval excludes 0 is "
           f"resolved at this level; one that includes 0 is not.", ""]
    out += experiment_lines(experiments) + [""]
    if comparison.unverified:
        out += [f"The noisy-set recipes of {', '.join(comparison.unverified)} could not be read (data dirs moved?): "
                f"only their names and trial lists were checked.", ""]
    for trials in dict.fromkeys(r.trials for r in experiments[0].rows):
        count = next(r.num_trials for r in experiments[0].rows if r.trials == trials)
        out += [f"## Trials {trials} ({count} trials)", ""]
        head = ["cell"] + [e.name for e in experiments] + [f"{e.name} - {experiments[0].name}" for e in experiments[1:]]
        out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for row_label, conditions, method in table_rows(comparison, trials):
            values = [_fmt(comparison.value(i, trials, conditions, method, metric),
                           comparison.interval(i, trials, conditions, method, metric), digits)
                      for i in range(len(experiments))]
            diffs = []
            for i in range(1, len(experiments)):
                value, low, high = comparison.difference(i, trials, conditions, method, metric)
                diffs.append(_fmt(value, (low, high), digits, signed=True))
            out.append(f"| {row_label} | " + " | ".join(values + diffs) + " |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def snr_panels(comparison: Comparison, trials: str, metric: str = "eer"
               ) -> list[tuple[str, dict[str, list[tuple[int, float, float, float]]], dict[str, float]]]:
    """Per category: (title, experiment -> [(snr, value, low, high)], experiment -> clean value) for the plot."""
    first = comparison.experiments[0]
    noisy = [(c, m) for c, m in table_cells(first, trials) if c != CLEAN]
    clean = [(c, m) for c, m in table_cells(first, trials) if c == CLEAN]
    panels = []
    for category in dict.fromkeys(parse_condition(c)[0] for c, _ in noisy):
        lines: dict[str, list[tuple[int, float, float, float]]] = {}
        cleans: dict[str, float] = {}
        for index, experiment in enumerate(comparison.experiments):
            points = []
            for condition, method in noisy:
                cat, snr = parse_condition(condition)
                if cat == category:
                    low, high = comparison.interval(index, trials, [condition], method, metric)
                    points.append((snr, comparison.value(index, trials, [condition], method, metric), low, high))
            lines[experiment.name] = sorted(points)
            for condition, method in clean:
                cleans[experiment.name] = comparison.value(index, trials, [condition], method, metric)
        panels.append((f"{trials}: {category} ({noisy[0][1]})", lines, cleans))
    return panels


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def experiment_lines(experiments: Sequence[Experiment]) -> list[str]:
    """What each experiment was: warm-up or not, its protocol, and every config key that differs."""
    out = ["| experiment | dir | warm-up | protocol |", "|---|---|---|---|"]
    for e in experiments:
        warmup = "yes (NAW-SV)" if "warm-up" in e.configs else "none (fine-tuned without warm-up)"
        if e.protocol is None:
            protocol = "not recorded"
        else:
            differs = e.protocol.get("differs_from_released") or {}
            protocol = str(e.protocol["protocol"]) + (
                "; differs from released: " + ", ".join(f"{k}={v}" for k, v in differs.items()) if differs else "")
        out.append(f"| {e.name} | {printable_path(e.path)} | {warmup} | {protocol} |")
    out += ["", "Config keys that differ (stages whose config every experiment has):"]
    differing = []
    for stage in CONFIGS:
        if not all(stage in e.configs for e in experiments):
            continue
        flat = [_flatten(e.configs[stage]) for e in experiments]
        for key in dict.fromkeys(k for f in flat for k in f):
            values = [f.get(key, "<absent>") for f in flat]
            if any(v != values[0] for v in values[1:]):
                pairs = zip(experiments, values, strict=True)
                differing.append(f"- {stage} `{key}`: " + ", ".join(f"{e.name} {v!r}" for e, v in pairs))
    return out + (differing or ["- none"])


def comparison_tsv(comparison: Comparison) -> str:
    """Every cell and mean, every metric: values, intervals, differences and paired intervals."""
    experiments = comparison.experiments
    head = ["trials", "cell", "method", "metric"]
    for e in experiments:
        head += [e.name, f"{e.name}_low", f"{e.name}_high"]
    for e in experiments[1:]:
        head += [f"{e.name}-{experiments[0].name}", "diff_low", "diff_high"]
    lines = ["\t".join(head)]
    metrics = ["eer"] + [f"mindcf_{p:g}" for p in experiments[0].score_cfg.p_targets]
    for trials in dict.fromkeys(r.trials for r in experiments[0].rows):
        for label, conditions, method in table_rows(comparison, trials):
            for metric in metrics:
                fields = [trials, label.strip("*"), method, metric]
                for i in range(len(experiments)):
                    low, high = comparison.interval(i, trials, conditions, method, metric)
                    fields += [f"{comparison.value(i, trials, conditions, method, metric):.6g}", f"{low:.6g}",
                               f"{high:.6g}"]
                for i in range(1, len(experiments)):
                    fields += [f"{v:.6g}" for v in comparison.difference(i, trials, conditions, method, metric)]
                lines.append("\t".join(fields))
    return "\n".join(lines) + "\n"
