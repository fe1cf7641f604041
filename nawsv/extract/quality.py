"""Per-utterance quality measures read from the audio: ``utt2snr`` (dB, :mod:`nawsv.scoring.snr`) and
``utt2dur`` (seconds of the audio as read), written to ``<exp>/quality/<set>/`` for QMF calibration.

Stage 5 runs it beside the embeddings; a rerun keeps tables that already cover every utterance of the set.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from nawsv.data.audio import SAMPLE_RATE
from nawsv.formats.kaldi import read_table, write_table
from nawsv.data.sources import open_audio_source
from nawsv.extract.loader import iterate_audio
from nawsv.scoring.snr import estimate_snr

log = logging.getLogger(__name__)

TABLES = ("utt2snr", "utt2dur")


def measure_quality(data_dir: str | Path, out_dir: str | Path, num_workers: int = 0) -> Path:
    """Write ``out_dir/utt2snr`` and ``out_dir/utt2dur`` for every utterance of ``data_dir``; returns out_dir."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    keys = sorted(open_audio_source(data_dir).keys())
    if all((out_dir / t).is_file() and set(read_table(out_dir / t)) == set(keys) for t in TABLES):
        log.info("%s: quality tables are complete; kept", out_dir)
        return out_dir
    snr, dur = {}, {}
    for key, samples in iterate_audio(data_dir, keys, num_workers):
        snr[key] = f"{estimate_snr(samples, SAMPLE_RATE, key=key):.3f}"
        dur[key] = f"{samples.size / SAMPLE_RATE:.3f}"
    write_table(out_dir / "utt2dur", dur)
    write_table(out_dir / "utt2snr", snr)
    log.info("%s: SNR estimates of %d utterances (median %.1f dB)", out_dir, len(keys),
             float(np.median([float(v) for v in snr.values()])) if snr else float("nan"))
    return out_dir
