"""Stage 6: score every trial list in every test condition with every configured method.

Reads ``<exp>/embeddings/<set>/xvector[_seg].scp`` and ``<data>/<test_set>/trials/*``; writes
``<exp>/scores/<trials>_<condition>_<method>.score``, ``<exp>/results.tsv``, ``<exp>/results.md`` and the
resolved config ``<exp>/scores/config.yaml``. Everything is recomputed on each run and written atomically,
and only once every set, condition and trial list has been scored: bad input (a trial naming an utterance
without an embedding, a damaged ark) stops the stage before it rewrites any file. One scoring run at a time
per experiment (``<exp>/.score.lock``).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nawsv.formats.kaldi import Trial, printable_path, read_table, read_trials, write_table
from nawsv.protocol import summary_lines
from nawsv.scoring.asnorm import (Cohort, CohortStats, asnorm_scores, cohort_statistics, effective_top_n,
                                  speaker_cohort, trial_rows)
from nawsv.scoring.bootstrap import (Replicates, TrialUnits, bootstrap_metrics, draws_for, dropped_note,
                                     mean_draws, percentile_interval, trial_units)
from nawsv.scoring.calibration_eval import (CALIBRATORS_NAME, CalibrationCell, LoadedCalibration, calibrated_llrs,
                                            calibration_dir, cell_metrics, load_experiment_calibration)
from nawsv.scoring.calibration_results import calibration_markdown, write_calibration_tsv
from nawsv.scoring.conditions import Condition, discover_conditions
from nawsv.scoring.config import BootstrapConfig, ScoreConfig
from nawsv.scoring.cosine import (TrialIndex, full_scores, index_trials, pair_scores, segment_directions,
                                  trial_labels, utterance_directions)
from nawsv.scoring.embeddings import read_matrix_scp, read_vector_scp
from nawsv.scoring.metrics import compute_metrics
from nawsv.scoring.provenance import experiment_record, write_experiment_record
from nawsv.scoring.quality import impostor_statistics, quality_dir
from nawsv.scoring.results import Interval, MeanInterval, ResultRow, results_markdown, write_results_tsv
from nawsv.scoring.score_files import write_scores
from nawsv.utils.atomic import atomic_write_text
from nawsv.utils.config import save_config
from nawsv.utils.errors import ConfigError, DataError
from nawsv.utils.lock import directory_lock

log = logging.getLogger(__name__)

VECTOR_SCP = "xvector.scp"
SEGMENT_SCP = "xvector_seg.scp"


@dataclasses.dataclass(frozen=True)
class ScoreJob:
    """Where stage 6 reads and writes."""

    exp_dir: Path
    data_dir: Path
    test_set: str
    trials: list[str]               # names under <data>/<test_set>/trials/; empty: all of them
    cohort_set: str | None = None

    @property
    def embeddings_dir(self) -> Path:
        return self.exp_dir / "embeddings"

    @property
    def scores_dir(self) -> Path:
        return self.exp_dir / "scores"

    @property
    def trials_dir(self) -> Path:
        return self.data_dir / self.test_set / "trials"


def score_path(scores_dir: Path, trials: str, condition: str, method: str) -> Path:
    """The score file of one trial list, condition and method."""
    return scores_dir / f"{trials}_{condition}_{method}.score"


def load_trial_lists(job: ScoreJob) -> dict[str, list[Trial]]:
    """The trial lists to score, by name (all files in the trials dir when none are named)."""
    if not job.trials_dir.is_dir():
        raise DataError(f"{job.trials_dir} does not exist; stage 1 writes trial lists there (check --data_dir and "
                        f"--test_set)")
    names = job.trials or sorted(p.name for p in job.trials_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{job.trials_dir} holds no trial lists; rerun stage 1 with --trials NAME=PATH")
    for name in names:
        if not (job.trials_dir / name).is_file():
            available = sorted(p.name for p in job.trials_dir.iterdir() if p.is_file())
            raise DataError(f"trial list {name!r} is not in {job.trials_dir}; available: {', '.join(available)}")
    return {name: read_trials(job.trials_dir / name) for name in names}


def load_cohort(job: ScoreJob) -> Cohort:
    """Speaker-mean cohort from ``<exp>/embeddings/<cohort_set>/xvector.scp`` and ``<data>/<cohort_set>/utt2spk``."""
    assert job.cohort_set is not None
    utt2spk = job.data_dir / job.cohort_set / "utt2spk"
    table = read_vector_scp(job.embeddings_dir / job.cohort_set / VECTOR_SCP)
    cohort = speaker_cohort(table, read_table(utt2spk), utt2spk)
    log.info("AS-norm cohort: %d speakers from %d embeddings of %s", len(cohort.speakers), len(table), job.cohort_set)
    return cohort


def _available_methods(cfg: ScoreConfig, has_segments: bool, condition: Condition) -> list[str]:
    methods = list(cfg.methods)
    if not has_segments and ({"segment", "full"} & set(methods)):
        log.warning("%s: no %s; skipping the segment and full methods for this condition (extract segment "
                    "embeddings in stage 5 to get them)", condition.set_name, SEGMENT_SCP)
        methods = [m for m in methods if m not in ("segment", "full")]
    return methods


@dataclasses.dataclass(frozen=True)
class ConditionScores:
    """Scores per trial list and method of one condition (trial order), and the AS-norm impostor mean of every
    utterance the trials use (None without asnorm)."""

    scores: dict[str, dict[str, np.ndarray]]
    impostor_mean: dict[str, float] | None


def score_condition(job: ScoreJob, cfg: ScoreConfig, condition: Condition, trial_lists: dict[str, list[Trial]],
                    cohort: Cohort | None, top_n: int, own_speaker: Mapping[str, str] | None = None
                    ) -> ConditionScores:
    """Score one condition. ``own_speaker`` (utterance -> speaker) leaves each utterance's own speaker out of
    its AS-norm cohort: needed when the trials come from the cohort's training set (calibration)."""
    set_dir = job.embeddings_dir / condition.set_name
    vectors = read_vector_scp(set_dir / VECTOR_SCP)
    directions = utterance_directions(vectors)
    has_segments = (set_dir / SEGMENT_SCP).is_file()
    methods = _available_methods(cfg, has_segments, condition)
    segments = read_matrix_scp(set_dir / SEGMENT_SCP) if has_segments and ({"segment", "full"} & set(methods)) else None
    seg_directions = segment_directions(segments) if segments is not None else None
    indices: dict[str, TrialIndex] = {name: index_trials(trials, vectors.index, job.trials_dir / name, vectors.source)
                                      for name, trials in trial_lists.items()}
    stats = None
    if "asnorm" in methods:
        assert cohort is not None
        rows = np.unique(np.concatenate([trial_rows(i) for i in indices.values()]))
        if own_speaker is None:
            stats = cohort_statistics(directions, cohort, top_n, rows)
        else:
            own = impostor_statistics(directions[rows], [vectors.keys[r] for r in rows], cohort, top_n, own_speaker)
            stats = CohortStats(np.full(len(vectors.keys), np.nan), np.full(len(vectors.keys), np.nan), own.top_n)
            stats.mean[rows], stats.std[rows] = own.mean, own.std
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, trials in trial_lists.items():
        cosine = pair_scores(directions, indices[name])
        scores = {"cosine": cosine}
        if seg_directions is not None:
            seg_index = index_trials(trials, segments.index, job.trials_dir / name, segments.source)
            scores["segment"] = pair_scores(seg_directions, seg_index)
            scores["full"] = full_scores(cosine, scores["segment"])
        if stats is not None:
            scores["asnorm"] = asnorm_scores(cosine, indices[name], stats)
        out[name] = {m: scores[m] for m in methods}
    impostor = None if stats is None else {vectors.keys[r]: float(stats.mean[r]) for r in rows}
    return ConditionScores(out, impostor)


ScoreFile = tuple[Path, list[Trial], np.ndarray]
CellKey = tuple[str, str, str]          # (trial list, condition, method)


@dataclasses.dataclass
class SetScores:
    """What scoring one test set produced, before anything is written."""

    rows: list[ResultRow]
    unlabelled: list[str]
    conditions: list[Condition]
    notes: list[str]
    outputs: list[ScoreFile]
    replicates: dict[CellKey, Replicates]
    unit_tables: dict[str, dict[str, str]]       # trial list -> the utt2spk of its utterances (speaker units)
    calibrated: list[CalibrationCell]            # calibrated metrics (empty without calibrators)


def resample_plan(job: ScoreJob, cfg: BootstrapConfig, name: str, trials: list[Trial]
                  ) -> tuple[TrialUnits, np.ndarray, dict[str, str]]:
    """The units and resamples of one trial list (speakers from ``<data>/<test_set>/utt2spk``)."""
    utt2spk: dict[str, str] = {}
    if cfg.unit == "speaker":
        path = job.data_dir / job.test_set / "utt2spk"
        if not path.is_file():
            raise DataError(f"{path} does not exist: the speaker bootstrap needs it; rerun stage 1, or set "
                            f"--override bootstrap.unit=utterance")
        table = read_table(path)
        keys = {key for trial in trials for key in (trial.enrol, trial.test)}
        utt2spk = {key: table[key] for key in sorted(keys) if key in table}
    pairs = [(t.enrol, t.test) for t in trials]
    units = trial_units(pairs, cfg.unit, utt2spk, source=str(job.trials_dir / name))
    return units, draws_for(units, cfg), utt2spk


def score_test_set(job: ScoreJob, cfg: ScoreConfig, calibration: LoadedCalibration | None = None) -> SetScores:
    """Score one clean test set and its noisy conditions (with bootstrap replicates when enabled, and calibrated
    metrics when ``calibration`` holds calibrators)."""
    if "asnorm" in cfg.methods and not job.cohort_set:
        raise ConfigError("the asnorm method needs a cohort: pass --cohort_set <training set with embeddings> "
                          "(e.g. mini_dev), or drop it with --override 'methods=[cosine,segment,full]'")
    conditions = discover_conditions(job.embeddings_dir, job.test_set, cfg.categories, cfg.snrs, cfg.conditions)
    log.info("%s conditions: %s", job.test_set, ", ".join(c.name for c in conditions))
    trial_lists = load_trial_lists(job)
    cohort = load_cohort(job) if "asnorm" in cfg.methods else None
    top_n = effective_top_n(cfg.asnorm_top_n, cohort) if cohort is not None else cfg.asnorm_top_n
    labels = {name: trial_labels(trials) for name, trials in trial_lists.items()}
    unlabelled = [name for name, value in labels.items() if value is None]
    for name in unlabelled:
        log.warning("trial list %s has no target/nontarget labels: writing its scores without metrics", name)
    plans: dict[str, tuple[TrialUnits, np.ndarray, dict[str, str]]] = {}   # made after the embeddings are checked
    rows: list[ResultRow] = []
    outputs: list[ScoreFile] = []
    replicates: dict[CellKey, Replicates] = {}
    calibrated: list[CalibrationCell] = []
    for condition in conditions:
        scored = score_condition(job, cfg, condition, trial_lists, cohort, top_n)
        for name, by_method in scored.scores.items():
            for method, scores in by_method.items():
                outputs.append((score_path(job.scores_dir, name, condition.name, method), trial_lists[name], scores))
                if labels[name] is None:
                    continue
                source = f"{name} / {condition.name} / {method}"
                if cfg.bootstrap.enabled:       # its point values are those of compute_metrics, from one sort
                    if name not in plans:
                        plans[name] = resample_plan(job, cfg.bootstrap, name, trial_lists[name])
                    units, draws, _ = plans[name]
                    cell = bootstrap_metrics(scores, labels[name], units, draws, cfg.p_targets, cfg.c_miss,
                                             cfg.c_fa, source, cfg.eer)
                    replicates[(name, condition.name, method)] = cell
                    eer, min_dcf, dropped = cell.eer, cell.min_dcf, cell.dropped
                    intervals = cell.intervals(cfg.bootstrap.confidence)
                else:
                    metrics = compute_metrics(scores, labels[name], cfg.p_targets, cfg.c_miss, cfg.c_fa,
                                              source=source, eer_method=cfg.eer)
                    eer, min_dcf, intervals, dropped = metrics.eer, metrics.min_dcf, {}, None
                rows.append(ResultRow(name, condition.set_name, condition.name, condition.category, condition.snr,
                                      method, len(scores), eer, min_dcf, intervals, dropped))
                if calibration is not None and method in calibration.calibrators:
                    pairs = [(t.enrol, t.test) for t in trial_lists[name]]
                    llrs = calibrated_llrs(calibration.calibrators[method], scores, pairs,
                                           quality_dir(job.exp_dir, condition.set_name), scored.impostor_mean)
                    for variant, llr in llrs.items():
                        values, cal_draws = cell_metrics(
                            llr, scores, labels[name], cfg.p_targets, cfg.c_miss, cfg.c_fa, min_dcf,
                            replicates.get((name, condition.name, method)), plans[name][:2] if name in plans else None)
                        calibrated.append(CalibrationCell(name, condition.name, condition.category, condition.snr,
                                                          method, variant, len(scores), values, cal_draws))
        log.info("scored %s", condition.set_name)
    dropped_notes = [dropped_note(row.trials, row.resamples_dropped, cfg.bootstrap.resamples)
                     for row in {row.trials: row for row in rows if row.resamples_dropped is not None}.values()]
    notes = _notes(job, top_n, cohort) + _not_built(job, cfg, conditions) + [n for n in dropped_notes if n]
    return SetScores(rows, unlabelled, conditions, notes,
                     outputs, replicates, {name: plan[2] for name, plan in plans.items() if plan[2]}, calibrated)


def run_score_stage(jobs: ScoreJob | Sequence[ScoreJob], cfg: ScoreConfig) -> tuple[list[ResultRow], str]:
    """Score every test set, write score files and one pair of results tables; returns the rows and results.md.

    Several test sets (e.g. Vox1-O from the test part, Vox1-E/H from all of VoxCeleb1) share one experiment, so
    their rows go into the same results.tsv / results.md, told apart by the trial-list name.
    """
    jobs = [jobs] if isinstance(jobs, ScoreJob) else list(jobs)
    exp_dirs = {job.exp_dir for job in jobs}
    if len(exp_dirs) != 1:
        raise ConfigError(f"all test sets must belong to one experiment dir, got {sorted(map(str, exp_dirs))}")
    exp_dir = jobs[0].exp_dir
    if not exp_dir.is_dir():
        raise DataError(f"experiment dir {exp_dir} does not exist; run stage 5 (extraction) first or check --exp_dir")
    with directory_lock(exp_dir, "stage 6 (score)", name=".score.lock"):
        return _score_and_write(jobs, cfg)


def _score_and_write(jobs: list[ScoreJob], cfg: ScoreConfig) -> tuple[list[ResultRow], str]:
    exp_dir = jobs[0].exp_dir
    calibration = (load_experiment_calibration(calibration_dir(exp_dir) / CALIBRATORS_NAME)
                   if cfg.calibration.enabled else None)
    results = [score_test_set(job, cfg, calibration) for job in jobs]
    calibrated = [cell for result in results for cell in result.calibrated]
    rows = [row for result in results for row in result.rows]
    noisy = list(dict.fromkeys(c.name for result in results for c in result.conditions if not c.is_clean))
    notes = [note for result in results for note in result.notes]
    replicates = {key: cell for result in results for key, cell in result.replicates.items()}
    noisy_sets = [c.set_name for result in results for c in result.conditions if not c.is_clean]
    for path, trials, scores in (output for result in results for output in result.outputs):
        write_scores(path, trials, scores)
    for result in results:
        for name, table in result.unit_tables.items():
            write_table(jobs[0].scores_dir / f"{name}.utt2spk", table)
    save_config(dataclasses.replace(cfg, conditions=noisy), jobs[0].scores_dir, allow_change=True)
    record = experiment_record(exp_dir, noisy_sets, cfg)
    write_experiment_record(exp_dir, record)
    interval = None
    if replicates:
        notes.append(bootstrap_note(cfg.bootstrap))
        interval = mean_interval_of(replicates, cfg.bootstrap.confidence)
    text = results_markdown(rows, title=f"Results of {printable_path(exp_dir.resolve().name)}", methods=cfg.methods,
                            p_targets=cfg.p_targets, categories=cfg.categories, snrs=cfg.snrs,
                            noisy_method=cfg.noisy_method, notes=notes,
                            unlabelled=[name for result in results for name in result.unlabelled], interval=interval,
                            eer_method=cfg.eer, protocol=summary_lines(record))
    if calibrated:
        text += "\n" + calibration_markdown(calibrated, cfg, calibration.info)
        write_calibration_tsv(exp_dir / "calibration.tsv", calibrated, cfg.p_targets, cfg.bootstrap.confidence)
    write_results_tsv(exp_dir / "results.tsv", rows, cfg.p_targets)
    atomic_write_text(exp_dir / "results.md", text)
    return rows, text


def _not_built(job: ScoreJob, cfg: ScoreConfig, conditions: Sequence[Condition]) -> list[str]:
    """A note naming the configured categories that have no noisy sets, when the test set has some."""
    found = {c.category for c in conditions if not c.is_clean}
    absent = [c for c in cfg.categories if c not in found]
    if not found or not absent:
        return []
    why = " (nonspeech needs a Nonspeech100 folder in stage 1)" if "nonspeech" in absent else ""
    return [f"{job.test_set}: no {'/'.join(absent)} cells: stage 2 did not build them{why}; every mean below is over "
            f"the cells that exist"]


def bootstrap_note(cfg: BootstrapConfig) -> str:
    """The sentence that says what the bracketed intervals are."""
    what = "speakers" if cfg.unit == "speaker" else "utterances"
    return (f"[low, high]: {100 * cfg.confidence:g} % percentile bootstrap interval, {cfg.resamples} resamples of the "
            f"trial list's {what} with replacement (seed {cfg.seed}); every cell and mean of one trial list uses the "
            f"same resamples; a resample that draws no target or no non-target trial is dropped (results.tsv "
            f"`resamples_dropped`) (README, \"Confidence intervals\")")


def mean_interval_of(replicates: dict[CellKey, Replicates], confidence: float) -> MeanInterval:
    """Intervals of a cell or of a mean over conditions, in the units of the tables (EER in percent)."""
    def interval(trials: str, method: str, metric: str, conditions: list[str]) -> Interval | None:
        cells = [replicates.get((trials, condition, method)) for condition in conditions]
        if not cells or any(cell is None for cell in cells):
            return None
        low, high = percentile_interval(mean_draws(cells, metric)[1], confidence)
        if np.isnan(low):
            return None
        scale = 100.0 if metric == "eer" else 1.0
        return scale * low, scale * high
    return interval


def _notes(job: ScoreJob, top_n: int, cohort: Cohort | None) -> list[str]:
    notes = [f"test set {job.test_set}; embeddings from {printable_path(job.embeddings_dir)}; score files in "
             f"{printable_path(job.scores_dir)}"]
    if cohort is not None:
        notes.append(f"asnorm: top {top_n} of {len(cohort.speakers)} cohort speakers "
                     f"(speaker means of {job.cohort_set}), population std")
    return notes
