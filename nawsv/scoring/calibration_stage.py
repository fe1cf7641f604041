"""The calibration step (``python -m nawsv.bin.calibrate``, run by stage 6 before scoring; rerunnable alone).

Reads the embeddings of the calibration sets (``<exp>/embeddings/<calib_set>[_<category>_<snr>]``, made from
the training set by stage 2 and extracted by stage 5) and their quality tables (``<exp>/quality/<set>/``), and
writes ``<exp>/calibration/``:

- ``trials``: the calibration trials (``enrol test target|nontarget``), drawn once with ``calibration.seed``
  among the calibration utterances and scored in every condition (both sides in that condition, as in the
  noisy test protocol);
- ``manifest.tsv``: per condition, the set, the trial counts and the seed;
- ``calibrators.json``: per scoring method, one calibrator per variant (score only, QMF, noise-aware QMF);
- ``config.yaml``: the resolved stage-6 config.

Calibration speakers are training speakers; the step refuses to run when one of them is also a speaker of a
test set (their trials would leak into the calibration).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from nawsv.formats.kaldi import Trial, read_table, write_trials
from nawsv.scoring.asnorm import effective_top_n
from nawsv.scoring.calibration_eval import CALIBRATORS_NAME, calibration_dir
from nawsv.scoring.calibrator import Calibrator, fit_calibrator, save_calibrators
from nawsv.scoring.conditions import discover_conditions
from nawsv.scoring.config import ScoreConfig
from nawsv.scoring.cosine import trial_labels
from nawsv.scoring.quality import UtteranceQuality, quality_dir, read_quality, trial_features, variant_features
from nawsv.scoring.stage import ScoreJob, load_cohort, score_condition
from nawsv.utils.atomic import atomic_write_text
from nawsv.utils.config import save_config
from nawsv.utils.errors import ConfigError, DataError
from nawsv.utils.lock import directory_lock
from nawsv.utils.seeding import stable_seed

log = logging.getLogger(__name__)

TRIALS_NAME = "trials"


@dataclasses.dataclass(frozen=True)
class CalibrationJob:
    """Where the calibration step reads and writes."""

    exp_dir: Path
    data_dir: Path
    calib_set: str                   # the clean calibration set, e.g. mini_dev_calib
    test_sets: Sequence[str]         # whose speakers must not be calibration speakers
    cohort_set: str | None = None


def check_no_test_speakers(utt2spk: Mapping[str, str], job: CalibrationJob) -> None:
    """A calibration trial must never involve a test speaker."""
    calibration_speakers = set(utt2spk.values())
    for test_set in job.test_sets:
        path = job.data_dir / test_set / "utt2spk"
        if not path.is_file():
            raise DataError(f"{path} does not exist: the calibration step checks that no test speaker is used; "
                            f"rerun stage 1 or check --test_set")
        shared = calibration_speakers & set(read_table(path).values())
        if shared:
            raise DataError(f"{len(shared)} speaker(s) of the calibration set {job.calib_set} are also speakers of "
                            f"{test_set} (e.g. {sorted(shared)[0]!r}); build the calibration set from a training "
                            f"set disjoint from the test speakers")


def draw_trials(utt2spk: Mapping[str, str], max_target: int, max_nontarget: int, seed: int) -> list[Trial]:
    """Same-speaker pairs (all, or ``max_target`` drawn) and ``max_nontarget`` different-speaker pairs drawn
    uniformly without repeats (all when there are fewer), in a deterministic order."""
    utts = sorted(utt2spk)
    speakers = np.array([utt2spk[u] for u in utts])
    first, second = np.triu_indices(len(utts), k=1)
    same = speakers[first] == speakers[second]
    rng = np.random.default_rng(stable_seed(seed, "calibration-trials", len(utts)))
    chosen = []
    for mask, cap in ((same, max_target), (~same, max_nontarget)):
        pairs = np.flatnonzero(mask)
        if pairs.size > cap:
            pairs = np.sort(rng.choice(pairs, size=cap, replace=False))
        chosen.append(pairs)
    order = np.sort(np.concatenate(chosen))
    return [Trial(utts[first[i]], utts[second[i]], bool(same[i])) for i in order]


def with_asnorm(method: str) -> bool:
    """Impostor means enter the QMF of the AS-norm method only (the other methods ignore the cohort)."""
    return method == "asnorm"


def run_calibration(job: CalibrationJob, cfg: ScoreConfig) -> dict[str, dict[str, Calibrator]]:
    """Fit and save the calibrators of every configured method and variant (module docstring)."""
    out_dir = calibration_dir(job.exp_dir)
    if not job.exp_dir.is_dir():
        raise DataError(f"experiment dir {job.exp_dir} does not exist; run stage 5 first or check --exp_dir")
    if "asnorm" in cfg.methods and not job.cohort_set:
        raise ConfigError("the asnorm method needs a cohort: pass --cohort_set (the training set)")
    with directory_lock(job.exp_dir, "calibration", name=".calibrate.lock"):
        return _calibrate(job, cfg, out_dir)


def _calibrate(job: CalibrationJob, cfg: ScoreConfig, out_dir: Path) -> dict[str, dict[str, Calibrator]]:
    calib = cfg.calibration
    utt2spk_path = job.data_dir / job.calib_set / "utt2spk"
    if not utt2spk_path.is_file():
        raise DataError(f"{utt2spk_path} does not exist; stage 2 builds the calibration sets "
                        f"(python -m nawsv.bin.make_calibration_sets)")
    utt2spk = read_table(utt2spk_path)
    check_no_test_speakers(utt2spk, job)
    embeddings = job.exp_dir / "embeddings"
    conditions = discover_conditions(embeddings, job.calib_set, calib.categories, calib.snrs)
    trials = draw_trials(utt2spk, calib.max_target_trials, calib.max_nontarget_trials, calib.seed)
    labels = trial_labels(trials)
    if labels is None or labels.all() or not labels.any():
        raise DataError(f"{job.calib_set}: the calibration trials need both target and non-target pairs; use more "
                        f"utterances per speaker (calibration.utts_per_speaker) or more speakers")
    score_job = ScoreJob(job.exp_dir, job.data_dir, job.calib_set, [], job.cohort_set)
    cohort = load_cohort(score_job) if "asnorm" in cfg.methods else None
    top_n = effective_top_n(cfg.asnorm_top_n, cohort) if cohort is not None else cfg.asnorm_top_n
    needs_snr = "qmf_snr" in calib.variants
    needs_quality = any(v != "score" for v in calib.variants)
    pairs = [(t.enrol, t.test) for t in trials]
    keys = sorted({k for pair in pairs for k in pair})
    features: dict[tuple[str, str], list[np.ndarray]] = {}
    manifest = ["condition\tset\tnum_target\tnum_nontarget\tseed"]
    for condition in conditions:
        scored = score_condition(score_job, cfg, condition, {TRIALS_NAME: trials}, cohort, top_n, own_speaker=utt2spk)
        quality = UtteranceQuality()
        if needs_quality:
            quality = read_quality(quality_dir(job.exp_dir, condition.set_name), keys, needs_snr)
        quality = dataclasses.replace(quality, impostor_mean=scored.impostor_mean)
        for method, scores in scored.scores[TRIALS_NAME].items():
            for variant in calib.variants:
                names = variant_features(variant, with_asnorm(method))
                features.setdefault((method, variant), []).append(trial_features(names, scores, pairs, quality))
        manifest.append(f"{condition.name}\t{condition.set_name}\t{int(labels.sum())}\t{int((~labels).sum())}\t"
                        f"{calib.seed}")
        log.info("calibration trials scored in %s", condition.set_name)
    all_labels = np.tile(labels, len(conditions))
    calibrators: dict[str, dict[str, Calibrator]] = {}
    for (method, variant), parts in features.items():
        names = variant_features(variant, with_asnorm(method))
        calibrators.setdefault(method, {})[variant] = fit_calibrator(
            np.concatenate(parts), all_labels, calib.p_fit, names, variant,
            source=f"calibration trials of {job.calib_set} ({method}, {variant})")
    write_trials(out_dir / TRIALS_NAME, trials)
    atomic_write_text(out_dir / "manifest.tsv", "\n".join(manifest) + "\n")
    info = {"calib_set": job.calib_set, "conditions": [c.name for c in conditions], "seed": calib.seed,
            "p_fit": calib.p_fit, "num_trials_per_condition": len(trials), "cohort_set": job.cohort_set,
            "asnorm_top_n": top_n, "decision_variant": calib.decision_variant, "p_target": calib.p_target}
    save_calibrators(out_dir / CALIBRATORS_NAME, calibrators, info)
    save_config(cfg, out_dir, allow_change=True)
    log.info("calibrators of %s x %s fitted on %d trials x %d conditions -> %s", list(calibrators),
             list(calib.variants), len(trials), len(conditions), out_dir / CALIBRATORS_NAME)
    return calibrators
