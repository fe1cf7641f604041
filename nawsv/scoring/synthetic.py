"""Speaker-structured random embeddings in the stage-5 layout, for scoring tests and benchmarks.

Each speaker has a random mean direction; an utterance is its speaker mean plus Gaussian noise, so cosine
scoring separates targets from non-targets about as well as ``within`` lets it. Sets are written with
kaldiio exactly as stage 5 writes them (``xvector.ark/scp`` vectors, ``xvector_seg.ark/scp`` matrices).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
import numpy as np

from nawsv.formats.kaldi import Trial, write_table


@dataclasses.dataclass(frozen=True)
class SyntheticSet:
    """Keys (grouped by speaker), their speakers, and float32 embeddings."""

    keys: list[str]
    speakers: list[str]
    vectors: np.ndarray                 # (utterances, dim)
    segments: np.ndarray | None = None  # (utterances, segments, dim)


def speaker_structured_set(rng: np.random.Generator, num_speakers: int, utts_per_speaker: int, dim: int = 192,
                           within: float = 0.8, first_speaker: int = 10000, segments: int = 0,
                           segment_noise: float = 0.5) -> SyntheticSet:
    """``num_speakers`` x ``utts_per_speaker`` embeddings with VoxCeleb-style keys ``idNNNNN/<video>/NNNNN.wav``."""
    means = rng.standard_normal((num_speakers, dim)).astype(np.float32)
    owner = np.repeat(np.arange(num_speakers), utts_per_speaker)
    vectors = means[owner] + within * rng.standard_normal((owner.size, dim)).astype(np.float32)
    speakers = [f"id{first_speaker + s}" for s in owner.tolist()]
    keys = [f"{spk}/video{(i % utts_per_speaker) % 3:07d}/{i % utts_per_speaker:05d}.wav"
            for i, spk in enumerate(speakers)]
    seg = None
    if segments:
        noise = rng.standard_normal((owner.size, segments, dim)).astype(np.float32)
        seg = vectors[:, None, :] + segment_noise * noise
    return SyntheticSet(keys, speakers, vectors.astype(np.float32), seg)


def corrupted(rng: np.random.Generator, clean: SyntheticSet, strength: float) -> SyntheticSet:
    """The same utterances with extra noise, as a noisy test condition would produce."""
    vectors = clean.vectors + strength * rng.standard_normal(clean.vectors.shape).astype(np.float32)
    segments = None
    if clean.segments is not None:
        segments = clean.segments + strength * rng.standard_normal(clean.segments.shape).astype(np.float32)
    return SyntheticSet(clean.keys, clean.speakers, vectors, segments)


def random_trial_indices(rng: np.random.Generator, num_speakers: int, utts_per_speaker: int, num_trials: int,
                         target_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(enrol, test, target) utterance indices for a set from :func:`speaker_structured_set`."""
    total = num_speakers * utts_per_speaker
    enrol = rng.integers(0, total, num_trials)
    target = rng.random(num_trials) < target_fraction
    speaker = enrol // utts_per_speaker
    other_utt = (enrol % utts_per_speaker + rng.integers(1, utts_per_speaker, num_trials)) % utts_per_speaker
    other_spk = (speaker + rng.integers(1, num_speakers, num_trials)) % num_speakers
    test = np.where(target, speaker * utts_per_speaker + other_utt,
                    other_spk * utts_per_speaker + rng.integers(0, utts_per_speaker, num_trials))
    return enrol, test, target


def random_trials(rng: np.random.Generator, data: SyntheticSet, utts_per_speaker: int, num_trials: int,
                  target_fraction: float = 0.5) -> list[Trial]:
    """Labelled trials between utterances of ``data`` (both sides distinct utterances)."""
    num_speakers = len(data.keys) // utts_per_speaker
    enrol, test, target = random_trial_indices(rng, num_speakers, utts_per_speaker, num_trials, target_fraction)
    keys = data.keys
    return [Trial(keys[e], keys[t], bool(y))
            for e, t, y in zip(enrol.tolist(), test.tolist(), target.tolist(), strict=True)]


def write_embedding_set(set_dir: str | Path, data: SyntheticSet) -> None:
    """``xvector.{ark,scp}`` (and ``xvector_seg.{ark,scp}`` when segments exist) with kaldiio, like stage 5."""
    import kaldiio

    set_dir = Path(set_dir)
    set_dir.mkdir(parents=True, exist_ok=True)
    with kaldiio.WriteHelper(f"ark,scp:{set_dir / 'xvector.ark'},{set_dir / 'xvector.scp'}") as writer:
        for key, vector in zip(data.keys, data.vectors, strict=True):
            writer(key, vector)
    if data.segments is not None:
        with kaldiio.WriteHelper(f"ark,scp:{set_dir / 'xvector_seg.ark'},{set_dir / 'xvector_seg.scp'}") as writer:
            for key, matrix in zip(data.keys, data.segments, strict=True):
                writer(key, matrix)


def write_utt2spk(data_dir: str | Path, data: SyntheticSet) -> None:
    write_table(Path(data_dir) / "utt2spk", dict(zip(data.keys, data.speakers, strict=True)))
