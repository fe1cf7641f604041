"""Audio reading and writing: 16 kHz mono float32 everywhere inside nawsv.

Every failure (missing, unreadable, empty, non-finite, too short) is an :class:`AudioError` naming the
utterance key and the file. Other sample rates are resampled with soxr unless the caller asks for an
error; multi-channel audio is mixed down with a warning.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import AudioError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
_warned_channels: set[str] = set()


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file."""

    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _name(path: str | os.PathLike, key: str | None) -> str:
    return f"utterance {key!r} ({path})" if key else str(path)


def _open_checked(path: str | os.PathLike, key: str | None) -> sf.SoundFile:
    """Open an audio file for reading; raise AudioError for missing, unreadable or empty files."""
    if not os.path.isfile(path):
        raise AudioError(f"{_name(path, key)}: file does not exist; fix the path in wav.scp or rerun stage 1")
    try:
        handle = sf.SoundFile(os.fsencode(path))     # bytes: names that are not UTF-8 open too
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{_name(path, key)}: cannot read audio header ({exc}); the file is corrupt or not "
                         f"audio") from None
    if handle.frames <= 0:
        handle.close()
        raise AudioError(f"{_name(path, key)}: file holds no samples (empty audio); remove it from the list")
    return handle


def audio_info(path: str | os.PathLike, key: str | None = None) -> AudioInfo:
    """Read the header; raise AudioError for missing, unreadable or empty files."""
    with _open_checked(path, key) as handle:
        return AudioInfo(int(handle.samplerate), int(handle.frames), int(handle.channels))


def _to_mono(samples: np.ndarray, source: str) -> np.ndarray:
    if samples.ndim == 2:
        if samples.shape[1] > 1 and source not in _warned_channels:
            if len(_warned_channels) < 1000:
                _warned_channels.add(source)
            log.warning("%s has %d channels; mixing down to mono", source, samples.shape[1])
        samples = samples.mean(axis=1)
    return samples


def resample(samples: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """High-quality resampling with soxr (float32 in, float32 out)."""
    if source_rate == target_rate:
        return samples
    import soxr

    return soxr.resample(samples, source_rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def _finish(samples: np.ndarray, rate: int, path: str | os.PathLike, key: str | None, sample_rate: int,
            allow_resample: bool, min_samples: int) -> np.ndarray:
    name = _name(path, key)
    samples = _to_mono(samples, name)
    if samples.size == 0:
        raise AudioError(f"{name}: file holds no samples (empty audio); remove it from the list")
    if not np.isfinite(samples).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples; the file is corrupt")
    if rate != sample_rate:
        if not allow_resample:
            raise AudioError(f"{name}: sample rate is {rate} Hz but {sample_rate} Hz is required; resample the "
                             f"corpus or allow resampling (on_rate_mismatch: resample)")
        samples = resample(samples, rate, sample_rate)
    if samples.size < min_samples:
        raise AudioError(f"{name}: only {samples.size} samples ({samples.size / sample_rate:.3f} s), "
                         f"shorter than the minimum of {min_samples} ({min_samples / sample_rate:.3f} s)")
    return np.ascontiguousarray(samples, dtype=np.float32)


def load_audio(path: str | os.PathLike, key: str | None = None, *, sample_rate: int = SAMPLE_RATE,
               allow_resample: bool = True, start: int = 0, num_samples: int | None = None,
               min_samples: int = 1) -> np.ndarray:
    """Read ``num_samples`` (all when None) from ``start`` (in target-rate samples) as mono float32.

    The file is opened once (header checks and the read share the handle): training loaders call this
    for every crop, so a second open per crop would be a measurable share of their time.
    """
    with _open_checked(path, key) as handle:
        return _read_window(handle, path, key, sample_rate, allow_resample, start, num_samples, min_samples)


class BufferReader(io.RawIOBase):
    """A read-only file over a buffer without copying it (an LMDB value mapped from disk)."""

    def __init__(self, buffer: bytes | memoryview) -> None:
        self._view = memoryview(buffer).cast("B")
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, target: Any) -> int:
        chunk = self._view[self._position:self._position + len(target)]
        memoryview(target).cast("B")[:len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)


def load_audio_bytes(data: bytes | memoryview, key: str, source: str, *, start: int = 0,
                     num_samples: int | None = None) -> np.ndarray:
    """:func:`load_audio` on the bytes of an audio file held in memory (an LMDB bank's value): the same
    samples, and as there only the window is decoded (the buffer is read in place)."""
    try:
        handle = sf.SoundFile(BufferReader(data))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{_name(source, key)}: cannot read audio header ({exc}); the data is not audio") from None
    with handle:
        return _read_window(handle, source, key, SAMPLE_RATE, True, start, num_samples, 1)


def _read_window(handle: sf.SoundFile, path: str | os.PathLike, key: str | None, sample_rate: int,
                 allow_resample: bool, start: int, num_samples: int | None, min_samples: int) -> np.ndarray:
    """The window of an open file, decoding only it at the native rate (else the whole file, resampled)."""
    rate = int(handle.samplerate)
    native = rate == sample_rate
    try:
        if native and start:
            handle.seek(min(start, handle.frames))
        count = num_samples if native and num_samples is not None else -1
        samples = handle.read(frames=count, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"{_name(path, key)}: cannot decode audio ({exc}); the file is corrupt") from None
    samples = _finish(samples, rate, path, key, sample_rate, allow_resample,
                      min_samples if start == 0 and num_samples is None else 1)
    if not native and (start or num_samples is not None):
        samples = samples[start:None if num_samples is None else start + num_samples]
    return samples


def decode_audio(data: bytes, key: str, source: str, *, sample_rate: int = SAMPLE_RATE,
                 allow_resample: bool = True, min_samples: int = 1) -> np.ndarray:
    """Decode an in-memory audio file (e.g. a shard member) as mono float32."""
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"utterance {key!r} in {source}: cannot decode audio ({exc})") from None
    return _finish(samples, rate, source, key, sample_rate, allow_resample, min_samples)


def write_audio(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE,
                subtype: str = "PCM_16") -> None:
    """Write audio atomically; the container follows the suffix (.wav or .flac)."""
    path = Path(path)
    fmt = {".wav": "WAV", ".flac": "FLAC"}.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"cannot write {path}: unsupported suffix (use .wav or .flac)")
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=fmt, subtype=subtype)
    with atomic_open(path, "wb", encoding=None) as handle:
        handle.write(buffer.getvalue())
