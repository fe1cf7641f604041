"""One way to read the audio of any test set: a Kaldi dir, a materialised or a manifest-only stage-2 dir.

Extraction (stage 5) opens every set with :func:`open_audio_source`. A manifest-only noisy condition is
mixed on the fly from the clean audio and the noise bank with the arithmetic and the 16-bit quantisation
of stage 2, so it returns exactly the samples the materialised files decode to.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from nawsv.data.audio import load_audio
from nawsv.formats.kaldi import read_wav_scp
from nawsv.data.noise_chunks import open_noise_bank
from nawsv.data.noisy_sets import (CONDITION_NAME, MANIFEST_NAME, pcm16_to_float, read_condition, read_manifest,
                                   render)
from nawsv.utils.errors import DataError


class AudioSource(Protocol):
    """Utterance keys and their 16 kHz mono float32 samples."""

    def keys(self) -> list[str]: ...

    def load(self, key: str) -> np.ndarray: ...


class WavScpSource:
    """Audio files listed in ``wav.scp`` (clean sets and materialised noisy conditions)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._paths = read_wav_scp(directory / "wav.scp")

    def keys(self) -> list[str]:
        return list(self._paths)

    def load(self, key: str) -> np.ndarray:
        try:
            path = self._paths[key]
        except KeyError:
            raise DataError(f"{self.directory}/wav.scp has no utterance {key!r}") from None
        return load_audio(path, key)


class ManifestSource:
    """A manifest-only noisy condition, mixed on the fly, bit-identical to its materialised audio."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._rows = {row.utt: row for row in read_manifest(directory / MANIFEST_NAME)}
        condition = read_condition(directory)
        self._bank = open_noise_bank(condition["noise_bank"], bool(condition.get("musan_chunks", False)))

    def keys(self) -> list[str]:
        return list(self._rows)

    def load(self, key: str) -> np.ndarray:
        try:
            row = self._rows[key]
        except KeyError:
            raise DataError(f"{self.directory}/{MANIFEST_NAME} has no utterance {key!r}") from None
        return pcm16_to_float(render(load_audio(row.clean_path, key), self._bank, row))


def open_audio_source(data_dir: str | Path) -> AudioSource:
    """The reader that fits ``data_dir``: its wav.scp when present, else its stage-2 manifest."""
    directory = Path(data_dir)
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist; run stage 1 (or stage 2 for noisy sets)")
    if (directory / CONDITION_NAME).is_file():
        if not (directory / MANIFEST_NAME).is_file():
            raise DataError(f"{directory} is an unfinished stage-2 condition (no {MANIFEST_NAME}); rerun stage 2 "
                            f"(make_noisy_sets) to complete it")
        if (directory / "wav.scp").is_file():
            return WavScpSource(directory)
        return ManifestSource(directory)
    if (directory / "wav.scp").is_file():
        return WavScpSource(directory)
    raise DataError(f"{directory} holds neither wav.scp nor a stage-2 {MANIFEST_NAME}; point at a prepared data dir")
