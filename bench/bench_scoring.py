"""Stage-6 speed and memory against WeSpeaker's scoring scripts (DESIGN section 9 reference figures).

Workloads are built here: random speaker-structured 192-d embeddings (speaker mean + noise) written with
kaldiio as ark/scp, and random trial lists, at Vox1-O size (40 speakers x 122 = 4,880 utterances, 37,611
trials; real Vox1-O has 4,874) and Vox1-H size (1,910 x 76 = 145,160 utterances, 550,894 trials), with an
AS-norm cohort of 5,994 speakers x 3 utterances. Every timing includes reading the ark/scp and the trial list
and writing the score file, as WeSpeaker's score.py / score_norm.py do; AS-norm timings also include building
the 5,994 speaker means from the cohort utterances (WeSpeaker reads precomputed means). The Vox1-H AS-norm run
is a fresh subprocess, so its peak RSS is its own. The bootstrap figures time the 95 % intervals of stage 6
(EER + two minDCFs, default 1,000 resamples) on the Vox1-H-size scores against the previous implementation
(bench/previous_bootstrap.py) in the same run; the stage figures time stage 6 on a Vox1-H-size experiment
(clean + 2 noisy conditions, cosine) with and without intervals. ``python -m bench scoring:bootstrap`` runs
only that part (``scoring:cosine``, ``scoring:asnorm``, ``scoring:stage`` likewise).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import Figure, peak_rss_mb, timer
from typing import Sequence

from bench.previous_bootstrap import previous_bootstrap
from nawsv.formats.kaldi import read_table, read_trials, write_table, write_trials
from nawsv.scoring.asnorm import asnorm_scores, cohort_statistics, speaker_cohort, trial_rows
from nawsv.scoring.bootstrap import bootstrap_metrics, draws_for, percentile_interval, trial_units
from nawsv.scoring.config import BootstrapConfig, ScoreConfig
from nawsv.scoring.cosine import index_trials, pair_scores, trial_labels, utterance_directions
from nawsv.scoring.embeddings import read_vector_scp
from nawsv.scoring.metrics import compute_metrics
from nawsv.scoring.score_files import write_scores
from nawsv.scoring.stage import ScoreJob, run_score_stage
from nawsv.scoring.synthetic import (SyntheticSet, random_trials, speaker_structured_set, write_embedding_set,
                                     write_utt2spk)
from nawsv.utils.seeding import rng_for

ROOT = Path(__file__).resolve().parents[1]
TOP_N = 300
PARTS = ("cosine", "asnorm", "bootstrap", "stage")


def _build(root: Path, speakers: int, utts: int, trials: int, seed: str) -> None:
    rng = rng_for("bench-scoring", seed)
    data = speaker_structured_set(rng, speakers, utts, dim=192, within=1.5)
    write_embedding_set(root / "emb", data)
    write_trials(root / "trials", random_trials(rng, data, utts, trials))


def _build_cohort(root: Path, speakers: int) -> None:
    data = speaker_structured_set(rng_for("bench-scoring", "cohort"), speakers, 3, dim=192, within=1.5,
                                  first_speaker=100000)
    write_embedding_set(root, data)
    write_utt2spk(root, data)


def cosine_pipeline(workload: Path, out: Path) -> np.ndarray:
    """Read embeddings and trials, score every trial by cosine, write the score file."""
    table = read_vector_scp(workload / "emb" / "xvector.scp")
    trials = read_trials(workload / "trials")
    scores = pair_scores(utterance_directions(table), index_trials(trials, table.index, "trials", table.source))
    write_scores(out, trials, scores)
    return scores


def asnorm_pipeline(workload: Path, cohort_dir: Path, out: Path) -> np.ndarray:
    """Read embeddings, cohort and trials; AS-norm every cosine score; write the score file."""
    table = read_vector_scp(workload / "emb" / "xvector.scp")
    trials = read_trials(workload / "trials")
    cohort = speaker_cohort(read_vector_scp(cohort_dir / "xvector.scp"), read_table(cohort_dir / "utt2spk"),
                            cohort_dir / "utt2spk")
    directions = utterance_directions(table)
    index = index_trials(trials, table.index, "trials", table.source)
    stats = cohort_statistics(directions, cohort, TOP_N, trial_rows(index))
    scores = asnorm_scores(pair_scores(directions, index), index, stats)
    write_scores(out, trials, scores)
    return scores


def _naive_asnorm_max_diff(workload: Path, cohort_dir: Path, scores: np.ndarray, count: int) -> float:
    """Largest |ours - per-trial loop| over the first ``count`` trials (the loop does everything per trial)."""
    table = read_vector_scp(workload / "emb" / "xvector.scp")
    cohort = read_vector_scp(cohort_dir / "xvector.scp")
    utt2spk = read_table(cohort_dir / "utt2spk")
    speakers: dict[str, list[np.ndarray]] = {}
    for key, vector in zip(cohort.keys, cohort.vectors.astype(np.float64), strict=True):
        speakers.setdefault(utt2spk[key], []).append(vector / np.linalg.norm(vector))
    means = np.stack([np.mean(v, axis=0) for v in speakers.values()])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    worst = 0.0
    for n, trial in enumerate(read_trials(workload / "trials")[:count]):
        sides = []
        for key in (trial.enrol, trial.test):
            vector = table.vectors[table.index[key]].astype(np.float64)
            vector /= np.linalg.norm(vector)
            top = np.sort(means @ vector)[::-1][:TOP_N]
            sides.append((vector, top.mean(), top.std()))
        raw = float(sides[0][0] @ sides[1][0])
        expected = 0.5 * ((raw - sides[0][1]) / sides[0][2] + (raw - sides[1][1]) / sides[1][2])
        worst = max(worst, abs(expected - float(scores[n])))
    return worst


def _child_asnorm(workload: str, cohort_dir: str, out: str) -> None:
    with timer() as t:
        asnorm_pipeline(Path(workload), Path(cohort_dir), Path(out))
    print(json.dumps({"seconds": t["s"], "peak_rss_mb": peak_rss_mb()}))


def _asnorm_in_fresh_process(workload: Path, cohort_dir: Path, out: Path) -> dict[str, float]:
    code = ("import sys, bench.bench_scoring as b; b._child_asnorm(sys.argv[1], sys.argv[2], sys.argv[3])")
    proc = subprocess.run([sys.executable, "-c", code, str(workload), str(cohort_dir), str(out)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_seconds(function, repeats: int) -> float:
    """Median wall time of ``repeats`` calls (small workloads: one call is dominated by noise)."""
    times = []
    for _ in range(repeats):
        with timer() as t:
            function()
        times.append(t["s"])
    return float(np.median(times))


def _bootstrap_figures(workload: Path, clean: np.ndarray, note: str) -> list[Figure]:
    """Stage 6's intervals on one score set, speaker units (default) and utterance units, against the previous
    implementation on the same draws (each timing draws its resamples afresh, as one cell of stage 6 does)."""
    trials = read_trials(workload / "trials")
    labels = trial_labels(trials)
    pairs = [(t.enrol, t.test) for t in trials]
    utt2spk = {key: key.split("/")[0] for pair in pairs for key in pair}
    cfg = BootstrapConfig()
    # a noisy cell: EER near 28 % and scores with 3 decimals (many ties), where resampled optima spread widely
    noisy = np.round(clean + rng_for("bench-scoring", "noisy").normal(0.0, 0.25, clean.size), 3)
    figures = []
    for unit, scores, what, target in (("speaker", clean, "", ">= 10x faster"),
                                       ("utterance", clean, "", ">= 4x faster"),
                                       ("speaker", noisy, ", noisy (3-decimal) scores", "")):
        with timer() as setup:
            units = trial_units(pairs, unit, utt2spk)
        with timer() as old:
            old_eer, old_dcf = previous_bootstrap(scores, labels, units, draws_for(units, cfg), (0.01, 0.05))
        with timer() as t:
            result = bootstrap_metrics(scores, labels, units, draws_for(units, cfg), (0.01, 0.05))
        low, high = percentile_interval(result.eer_draws, cfg.confidence)
        over = max(float(np.nanmax(old_dcf[p] - result.min_dcf_draws[p])) for p in old_dcf)
        figures.append(Figure(
            f"bootstrap, {cfg.resamples} resamples of {len(units.names)} {unit}s, EER + 2 minDCF, {len(scores)} "
            f"scores{what}",
            t["s"], "s", old["s"], target,
            f"previous implementation {old['s']:.2f} s, same draws: EER draws equal "
            f"{np.array_equal(old_eer, result.eer_draws, equal_nan=True)}, previous minDCF minus ours at most "
            f"{over:.1e} (its float32 search); +{setup['s']:.2f} s units; EER {100 * result.eer:.2f}% "
            f"[{100 * low:.2f}, {100 * high:.2f}]" + (f"; {note}" if note else "")))
    return figures


def _stage_workload(root: Path, workload: Path, conditions: Sequence[str]) -> ScoreJob:
    """A stage-6 experiment on the Vox1-H-size workload: its clean embeddings and noisier copies as conditions."""
    test_set = "vox1_h_bench"
    (root / "exp" / "embeddings").mkdir(parents=True)
    (root / "exp" / "embeddings" / test_set).symlink_to(workload / "emb")
    clean = read_vector_scp(workload / "emb" / "xvector.scp")
    speakers = [key.split("/")[0] for key in clean.keys]
    rng = rng_for("bench-scoring", "stage")
    for name in conditions:
        noisy = clean.vectors + 1.5 * rng.standard_normal(clean.vectors.shape).astype(np.float32)
        write_embedding_set(root / "exp" / "embeddings" / f"{test_set}_{name}",
                            SyntheticSet(list(clean.keys), speakers, noisy))
    write_table(root / "data" / test_set / "utt2spk", dict(zip(clean.keys, speakers, strict=True)))
    write_trials(root / "data" / test_set / "trials" / "vox1_h", read_trials(workload / "trials"))
    return ScoreJob(root / "exp", root / "data", test_set, [])


def _stage_figures(root: Path, workload: Path, note: str) -> list[Figure]:
    """Stage 6 (cosine scoring of every condition, score files, results) with and without intervals."""
    conditions = ["noise_0", "music_5"]
    job = _stage_workload(root, workload, conditions)
    base = dict(methods=["cosine"], clean_method="cosine", noisy_method="cosine", conditions=conditions)
    seconds: dict[int, list[float]] = {0: [], BootstrapConfig().resamples: []}
    for resamples in list(seconds) * 2:         # alternated, the faster of two: less noise on a shared machine
        cfg = ScoreConfig(**base, bootstrap=BootstrapConfig(resamples=resamples))
        with timer() as t:
            run_score_stage(job, cfg)
        seconds[resamples].append(t["s"])
    with_intervals, without = min(seconds[BootstrapConfig().resamples]), min(seconds[0])
    cells = 1 + len(conditions)
    return [Figure(f"stage 6, Vox1-H size, {cells} cells (cosine), 95 % intervals on every cell", with_intervals, "s",
                   None, "", f"{BootstrapConfig().resamples} speaker resamples, faster of 2 runs"
                   + (f"; {note}" if note else "")),
            Figure("stage 6, the same without intervals", without, "s", None, "", "faster of 2 runs"
                   + (f"; {note}" if note else "")),
            Figure("stage 6 time with intervals / without", with_intervals / without, "x", None, "<= 2x", note)]


def run(args: argparse.Namespace, parts: tuple[str, ...] = PARTS) -> list[Figure]:
    quick = args.quick
    o_spk, o_utt, o_trials = (10, 122, 9_000) if quick else (40, 122, 37_611)
    h_spk, h_utt, h_trials = (191, 76, 55_089) if quick else (1_910, 76, 550_894)
    cohort_speakers = 600 if quick else 5_994
    note = "quick workload: not comparable with the reference" if quick else ""

    def ref(value: float) -> float | None:
        return None if quick else value

    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _build(tmp / "h", h_spk, h_utt, h_trials, "H")
        if "cosine" in parts or "asnorm" in parts:
            _build(tmp / "o", o_spk, o_utt, o_trials, "O")
        if "cosine" in parts:
            seconds = _median_seconds(lambda: cosine_pipeline(tmp / "o", tmp / "o.score"), 3)
            figures.append(Figure(f"cosine, Vox1-O size ({o_spk * o_utt} utts, {o_trials} trials), incl. I/O",
                                  seconds, "s", ref(12.2), ">= 20x faster (<= 0.61 s)", note or "median of 3"))
        with timer() as t:
            h_scores = cosine_pipeline(tmp / "h", tmp / "h.score")
        if "cosine" in parts:
            figures.append(Figure(f"cosine, Vox1-H size ({h_spk * h_utt} utts, {h_trials} trials), incl. I/O",
                                  t["s"], "s", ref(168.0), "<= 8.5 s", note))
            labels = trial_labels(read_trials(tmp / "h" / "trials"))
            seconds = _median_seconds(lambda: compute_metrics(h_scores, labels, (0.01, 0.05)), 3)
            metrics = compute_metrics(h_scores, labels, (0.01, 0.05))
            figures.append(Figure(f"EER + minDCF(0.01, 0.05) on {h_trials} scores", seconds, "s", ref(3.2), "<= 1 s",
                                  f"median of 3; EER {100 * metrics.eer:.2f}%" + (f"; {note}" if note else "")))
        if "bootstrap" in parts:
            figures += _bootstrap_figures(tmp / "h", h_scores, note)
        if "stage" in parts:
            figures += _stage_figures(tmp / "stage", tmp / "h", note)
        if "asnorm" in parts:
            _build_cohort(tmp / "c", cohort_speakers)
            seconds = _median_seconds(lambda: asnorm_pipeline(tmp / "o", tmp / "c", tmp / "o_asnorm.score"), 3)
            o_asnorm = asnorm_pipeline(tmp / "o", tmp / "c", tmp / "o_asnorm.score")
            figures.append(Figure(f"AS-norm top {TOP_N} of {cohort_speakers} cohort, Vox1-O size, incl. I/O", seconds,
                                  "s", ref(1.8), ">= 3x faster (<= 0.6 s)", note or "median of 3"))
            diff = _naive_asnorm_max_diff(tmp / "o", tmp / "c", o_asnorm, 300)
            figures.append(Figure("AS-norm max |ours - per-trial loop| over 300 trials", diff, "abs", None, "<= 1e-4"))
            child = _asnorm_in_fresh_process(tmp / "h", tmp / "c", tmp / "h_asnorm.score")
            figures.append(Figure(f"AS-norm top {TOP_N} of {cohort_speakers} cohort, Vox1-H size, incl. I/O",
                                  child["seconds"], "s", ref(49.0), ">= 3x faster (<= 16.3 s)", note))
            figures.append(Figure("AS-norm Vox1-H size: peak RSS of a fresh process", child["peak_rss_mb"], "MB",
                                  ref(7.4 * 1024), "<= 1536 MB", "ratio < 1 is better here" if not quick else note))
    return figures
