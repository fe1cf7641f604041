"""Calibration sets: a seeded subset of the *training* set, clean and corrupted with the training noise bank.

A calibrator must be trained on trials that look like the test trials but never come from the test speakers.
``<out_root>/<name>/`` holds ``utts_per_speaker`` utterances of every training speaker (drawn with ``seed``,
listed with the seed in ``calibration.yaml``), and ``<out_root>/<name>_<category>_<snr>/`` are its stage-2
style noisy copies made with the MUSAN *training* half (the noise the training augmentation draws from), with
their manifests, by :func:`nawsv.data.noisy_sets.make_noisy_sets`, so they are deterministic and resumable.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import yaml

from nawsv.formats.kaldi import KaldiDir, read_kaldi_dir, write_kaldi_dir
from nawsv.data.noisy_sets import NoisySetConfig, make_noisy_sets
from nawsv.utils.atomic import atomic_write_text
from nawsv.utils.errors import DataError
from nawsv.utils.seeding import stable_seed

log = logging.getLogger(__name__)

SELECTION_NAME = "calibration.yaml"


def select_utterances(data: KaldiDir, per_speaker: int, seed: int) -> list[str]:
    """Up to ``per_speaker`` utterances of every speaker (those with fewer keep all), drawn with ``seed``."""
    chosen: list[str] = []
    for speaker, utts in sorted(data.spk2utt.items()):
        utts = sorted(utts)
        rng = np.random.default_rng(stable_seed(seed, "calibration", speaker))
        picked = rng.choice(len(utts), size=min(per_speaker, len(utts)), replace=False)
        chosen += [utts[i] for i in sorted(picked)]
    return chosen


def make_calibration_sets(train_dir: str | Path, out_root: str | Path, name: str, per_speaker: int, seed: int,
                          noisy: NoisySetConfig, musan: str | Path, nj: int = 1,
                          materialize: bool = True) -> list[Path]:
    """Write the clean calibration subset and its noisy copies; returns every set dir (clean first)."""
    train_dir, out_root = Path(train_dir), Path(out_root)
    data = read_kaldi_dir(train_dir)
    utts = select_utterances(data, per_speaker, seed)
    if len({data.utt2spk[u] for u in utts}) < 2:
        raise DataError(f"{train_dir}: calibration needs at least 2 speakers (non-target trials)")
    selection = {"source": str(train_dir.resolve()), "seed": seed, "utts_per_speaker": per_speaker,
                 "utterances": utts}
    clean = out_root / name
    record = clean / SELECTION_NAME
    if record.is_file() and yaml.safe_load(record.read_text(encoding="utf-8")) != selection:
        raise DataError(f"{clean} holds a calibration set drawn differently (other seed, size or training set); "
                        f"remove {clean} and {out_root}/{name}_* to redraw it, or restore the old options")
    subset = KaldiDir({u: data.wav_scp[u] for u in utts}, {u: data.utt2spk[u] for u in utts},
                      None if data.utt2dur is None else {u: data.utt2dur[u] for u in utts})
    write_kaldi_dir(clean, subset)
    atomic_write_text(record, yaml.safe_dump(selection, sort_keys=False))
    log.info("calibration set %s: %d utterances of %d speakers (seed %d)", clean, len(utts),
             len(set(subset.utt2spk.values())), seed)
    return [clean] + make_noisy_sets(clean, out_root, noisy, musan=musan, nj=nj, materialize=materialize)
