"""AS-norm against a straightforward per-trial loop, and the cohort against per-speaker loops."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nawsv.formats.kaldi import Trial
from nawsv.scoring import asnorm
from nawsv.scoring.asnorm import (Cohort, asnorm_scores, cohort_statistics, effective_top_n, speaker_cohort,
                                  trial_rows)
from nawsv.scoring.cosine import index_trials, pair_scores, utterance_directions
from nawsv.scoring.embeddings import VectorTable
from nawsv.utils.errors import DataError


def naive_asnorm(enrol: np.ndarray, test: np.ndarray, cohort: np.ndarray, top_n: int) -> float:
    """WeSpeaker-style AS-norm of one trial, spelled out with Python lists."""
    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    def stats(v: np.ndarray) -> tuple[float, float]:
        scores = sorted((float(np.dot(unit(v), unit(c))) for c in cohort), reverse=True)[:top_n]
        mean = sum(scores) / len(scores)
        return mean, (sum((s - mean) ** 2 for s in scores) / len(scores)) ** 0.5

    raw = float(np.dot(unit(enrol), unit(test)))
    (me, se), (mt, st) = stats(enrol), stats(test)
    return 0.5 * ((raw - me) / se + (raw - mt) / st)


@pytest.mark.parametrize("top_n, chunk", [(5, 1 << 24), (12, 37), (40, 64)])
def test_asnorm_equals_per_trial_loop(top_n: int, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asnorm, "COHORT_SCORES_PER_CHUNK", chunk)       # force several utterance chunks
    rng = np.random.default_rng(top_n)
    utterances = rng.standard_normal((30, 16)).astype(np.float32)
    cohort_raw = rng.standard_normal((40, 16)).astype(np.float32)
    keys = [f"u{i}" for i in range(30)]
    table = VectorTable(keys=keys, source=Path("x.scp"), vectors=utterances)
    cohort = Cohort([f"s{i}" for i in range(40)], cohort_raw / np.linalg.norm(cohort_raw, axis=1, keepdims=True))
    trials = [Trial(keys[a], keys[b], bool(a % 2)) for a, b in rng.integers(0, 30, (60, 2))]
    index = index_trials(trials, table.index, "t", "x.scp")
    directions = utterance_directions(table)
    stats = cohort_statistics(directions, cohort, top_n, trial_rows(index))
    got = asnorm_scores(pair_scores(directions, index), index, stats)
    for n, trial in enumerate(trials):
        expected = naive_asnorm(utterances[keys.index(trial.enrol)], utterances[keys.index(trial.test)],
                                cohort_raw, top_n)
        assert got[n] == pytest.approx(expected, abs=1e-5)
    unused = np.setdiff1d(np.arange(30), trial_rows(index))
    assert np.isnan(stats.mean[unused]).all()          # statistics only for utterances the trials use


def test_speaker_cohort_is_mean_of_unit_embeddings() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((9, 5)).astype(np.float32)
    keys = [f"u{i}" for i in range(9)]
    utt2spk = {k: ("spkB" if i % 3 else "spkA") for i, k in enumerate(keys)}
    cohort = speaker_cohort(VectorTable(keys=keys, source=Path("c.scp"), vectors=vectors), utt2spk, "utt2spk")
    assert cohort.speakers == ["spkA", "spkB"]
    for s, speaker in enumerate(cohort.speakers):
        members = [vectors[i] / np.linalg.norm(vectors[i]) for i, k in enumerate(keys) if utt2spk[k] == speaker]
        mean = np.mean(members, axis=0)
        assert np.allclose(cohort.directions[s], mean / np.linalg.norm(mean), atol=1e-6)


def test_cohort_embedding_without_speaker_is_an_error() -> None:
    table = VectorTable(keys=["a", "b"], source=Path("c.scp"), vectors=np.ones((2, 3), np.float32))
    with pytest.raises(DataError, match="have no speaker in data/train/utt2spk, e.g. 'b'"):
        speaker_cohort(table, {"a": "s1"}, "data/train/utt2spk")


def test_top_n_equal_to_cohort_uses_all_speakers_and_larger_is_refused() -> None:
    rng = np.random.default_rng(8)
    directions = rng.standard_normal((4, 6)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    cohort = Cohort(["a", "b", "c"], directions[:3])
    assert effective_top_n(300, cohort) == 3 and effective_top_n(2, cohort) == 2
    stats = cohort_statistics(directions, cohort, 3)
    full = directions.astype(np.float64) @ directions[:3].T.astype(np.float64)
    assert np.allclose(stats.mean, full.mean(axis=1), atol=1e-6)
    assert np.allclose(stats.std, full.std(axis=1), atol=1e-6)
    with pytest.raises(DataError, match="top_n=4 must be between 2 and the 3 cohort"):
        cohort_statistics(directions, cohort, 4)
