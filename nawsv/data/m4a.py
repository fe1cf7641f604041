"""AAC (.m4a) audio as VoxCeleb2 ships it: decoding with PyAV, and a one-time conversion of a whole tree.

soundfile/libsndfile cannot read AAC, and training reads random crops of every utterance many times, so
decoding AAC on each read would cost far more than decoding it once. The recipe therefore converts the tree
once to lossless 16 kHz FLAC (or WAV) with the same relative paths; every later stage reads the copy through
the ordinary audio reader. The conversion runs in parallel, splits over array jobs (``job`` of
``num_jobs``), skips files already converted (a rerun resumes, and a final single-job pass checks that
nothing is missing) and writes each file atomically, so a killed job never leaves a truncated file.

PyAV (``av`` on PyPI, a wheel that bundles FFmpeg) is optional: only this module imports it, on first use.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np

from nawsv.data.audio import SAMPLE_RATE, _finish, write_audio
from nawsv.utils.atomic import atomic_open, atomic_write_text
from nawsv.utils.errors import AudioError, ConfigError, DataError
from nawsv.utils.progress import progress

log = logging.getLogger(__name__)

M4A_SUFFIXES = (".m4a",)
CONVERTED_FORMATS = ("flac", "wav")
INSTALL_HINT = "install PyAV (a wheel that bundles FFmpeg): pip install 'nawsv[m4a]', or pip install av"


def decoder_problem() -> str | None:
    """Why AAC cannot be decoded in this environment, or None when it can (tests skip with this text)."""
    try:
        import av  # noqa: F401
    except ImportError as exc:
        return f"no AAC decoder: PyAV is not installed ({exc}); {INSTALL_HINT}"
    return None


def _av():
    problem = decoder_problem()
    if problem:
        raise DataError(f"cannot read .m4a files: {problem}")
    import av

    return av


def _frame_samples(frame) -> np.ndarray:
    """One decoded frame as a float32 ``[samples, channels]`` array, whatever FFmpeg's sample format."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    data = data.T if frame.format.is_planar else data.reshape(-1, channels)
    if np.issubdtype(data.dtype, np.signedinteger):
        return data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    return data.astype(np.float32, copy=False)


def decode_m4a(path: str | os.PathLike, key: str | None = None, *, sample_rate: int = SAMPLE_RATE,
               min_samples: int = 1) -> np.ndarray:
    """Decode a whole AAC file to mono float32 at ``sample_rate`` (mixed down and resampled like any audio)."""
    av = _av()
    name = f"utterance {key!r} ({path})" if key else str(path)
    if not os.path.isfile(path):
        raise AudioError(f"{name}: file does not exist; check the path")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{name}: the file holds no audio stream")
            stream = container.streams.audio[0]
            chunks = [_frame_samples(frame) for frame in container.decode(stream)]
            rate = int(stream.codec_context.sample_rate or stream.rate)
    except AudioError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise AudioError(f"{name}: cannot decode AAC audio ({exc}); the file is corrupt or not an .m4a") from None
    samples = np.concatenate(chunks) if chunks else np.zeros((0, 1), dtype=np.float32)
    return _finish(samples, rate, path, key, sample_rate, True, min_samples)


def write_m4a(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Encode mono float audio as AAC in an .m4a container, atomically (synthetic VoxCeleb2-layout trees)."""
    av = _av()
    samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1)
    with atomic_open(path, "wb", encoding=None) as handle:
        with av.open(handle, "w", format="ipod") as container:
            stream = container.add_stream("aac", rate=sample_rate, layout="mono")
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = 0
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)


@dataclasses.dataclass
class ConversionResult:
    """What one conversion pass did; ``failed`` holds one message per file that could not be decoded."""

    converted: int = 0
    skipped: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)


def list_m4a(src_root: str | Path) -> list[Path]:
    """Every .m4a file under ``src_root``, sorted (the order that array jobs split)."""
    src_root = Path(src_root)
    if not src_root.is_dir():
        raise DataError(f"{src_root} does not exist; point the conversion at the folder holding the .m4a tree "
                        f"(VoxCeleb2: <vox2_root>/dev/aac)")
    files = sorted(p for p in src_root.rglob("*") if p.suffix.lower() in M4A_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no .m4a files under {src_root}; if that tree already holds .wav/.flac files, prepare "
                        f"it directly instead of converting it")
    return files


def converted_path(src: Path, src_root: Path, dst_root: Path, audio_format: str) -> Path:
    """Where ``src`` lands: the same relative path under ``dst_root`` with the new suffix."""
    return dst_root / src.relative_to(src_root).with_suffix(f".{audio_format}")


def _convert_one(job: tuple[str, str]) -> tuple[str, str]:
    src, dst = job
    if os.path.exists(dst):
        return "skipped", ""
    try:
        write_audio(dst, decode_m4a(src), SAMPLE_RATE, "PCM_16")
    except (AudioError, DataError) as exc:
        return "failed", str(exc)
    return "converted", ""


def convert_tree(src_root: str | Path, dst_root: str | Path, *, audio_format: Literal["flac", "wav"] = "flac",
                 nj: int = 1, job: int = 0, num_jobs: int = 1,
                 on_bad_audio: Literal["error", "skip"] = "error") -> ConversionResult:
    """Convert this job's share of the .m4a files under ``src_root`` to 16 kHz 16-bit files under ``dst_root``.

    Files already present are skipped (a rerun resumes). Undecodable files are reported all at once after the
    others are done: an AudioError with ``on_bad_audio: error``, a list in ``dst_root`` with ``skip``.
    """
    if audio_format not in CONVERTED_FORMATS:
        raise ConfigError(f"audio format {audio_format!r} is not one of {list(CONVERTED_FORMATS)}")
    if num_jobs < 1 or not 0 <= job < num_jobs:
        raise ConfigError(f"--job {job} --num_jobs {num_jobs}: need 0 <= job < num_jobs (jobs count from 0, as "
                          f"Slurm array indices do)")
    _av()
    src_root, dst_root = Path(src_root).resolve(), Path(dst_root).resolve()
    if dst_root == src_root or src_root in dst_root.parents:
        raise ConfigError(f"the converted tree {dst_root} must lie outside the source tree {src_root}")
    files = list_m4a(src_root)[job::num_jobs]
    jobs = [(str(p), str(converted_path(p, src_root, dst_root, audio_format))) for p in files]
    what = f"converting .m4a (job {job + 1} of {num_jobs})" if num_jobs > 1 else "converting .m4a"
    if nj > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(nj, len(jobs))) as pool:
            statuses = list(progress(pool.map(_convert_one, jobs, chunksize=64), what, "file", len(jobs)))
    else:
        statuses = [_convert_one(item) for item in progress(jobs, what, "file")]
    result = ConversionResult()
    for status, message in statuses:
        if status == "failed":
            result.failed.append(message)
        elif status == "converted":
            result.converted += 1
        else:
            result.skipped += 1
    log.info("%s -> %s: %d converted, %d already there, %d failed", src_root, dst_root, result.converted,
             result.skipped, len(result.failed))
    _report_failures(result.failed, dst_root, job, num_jobs, on_bad_audio)
    return result


def _report_failures(failed: list[str], dst_root: Path, job: int, num_jobs: int, on_bad_audio: str) -> None:
    if not failed:
        return
    if on_bad_audio == "error":
        more = f" (and {len(failed) - 1} more file(s))" if len(failed) > 1 else ""
        raise AudioError(f"{failed[0]}{more}. The other files were converted; fix or remove the bad file(s) and "
                         f"rerun, or set on_bad_audio: skip to leave them out")
    suffix = f".job{job}-of-{num_jobs}" if num_jobs > 1 else ""
    listing = dst_root / f"convert_failed{suffix}.txt"
    atomic_write_text(listing, "".join(message + "\n" for message in failed))
    log.warning("left out %d undecodable file(s), listed in %s", len(failed), listing)
