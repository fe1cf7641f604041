"""Noise and RIR banks written by stage 1 (``wav.scp`` + ``utt2cat`` [+ ``utt2dur``]) and windowed reads from them.

A window of ``num_samples`` is taken from a noise file the way the original recipe did: a file that is
not longer than the window is read whole and wrap-repeated from its start (``np.pad`` mode ``wrap``,
offset 0); a longer file gives a window at a random offset, read with a partial read so that a long
recording is never decoded whole. :meth:`NoiseBank.read_at` replays a recorded (key, offset) exactly.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nawsv.data.audio import SAMPLE_RATE, audio_info, load_audio
from nawsv.formats.kaldi import read_table, read_wav_scp
from nawsv.utils.errors import DataError


class NoiseBank:
    """The files of one bank directory, grouped by category, with exact lengths read lazily from headers."""

    def __init__(self, root: Path, wav_scp: dict[str, str], utt2cat: dict[str, str]) -> None:
        self.root = root
        self._paths = dict(wav_scp)
        by_category: dict[str, list[str]] = {}
        for key in sorted(utt2cat):
            by_category.setdefault(utt2cat[key], []).append(key)
        self._by_category = {c: tuple(keys) for c, keys in sorted(by_category.items())}
        self._frames: dict[str, int] = {}

    @classmethod
    def from_dir(cls, path: str | Path) -> "NoiseBank":
        """Load and cross-check ``wav.scp``, ``utt2cat`` and (when present) ``utt2dur`` of a bank dir."""
        root = Path(path).resolve()
        if not root.is_dir():
            raise DataError(f"noise bank {root} does not exist; run stage 1 (prepare_data musan/bank) to create it")
        wav_scp = read_wav_scp(root / "wav.scp")
        utt2cat = read_table(root / "utt2cat")
        if not wav_scp:
            raise DataError(f"noise bank {root}: wav.scp is empty; rerun stage 1 on a folder that holds audio")
        no_cat = sorted(set(wav_scp) - set(utt2cat))
        if no_cat:
            raise DataError(f"noise bank {root}: {len(no_cat)} file(s) in wav.scp have no category in utt2cat, "
                            f"e.g. {no_cat[0]!r}; rerun stage 1 for this bank")
        no_wav = sorted(set(utt2cat) - set(wav_scp))
        if no_wav:
            raise DataError(f"noise bank {root}: {len(no_wav)} key(s) in utt2cat have no file in wav.scp, "
                            f"e.g. {no_wav[0]!r}; rerun stage 1 for this bank")
        dur_path = root / "utt2dur"
        if dur_path.exists():
            missing = sorted(set(wav_scp) - set(read_table(dur_path)))
            if missing:
                raise DataError(f"noise bank {root}: {len(missing)} file(s) have no duration in utt2dur, "
                                f"e.g. {missing[0]!r}; rerun stage 1 for this bank")
        return cls(root, wav_scp, utt2cat)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self._by_category)

    def keys(self, category: str | None = None) -> tuple[str, ...]:
        """Sorted keys of one category (all keys when ``category`` is None)."""
        if category is None:
            return tuple(sorted(self._paths))
        keys = self._by_category.get(category)
        if not keys:
            raise DataError(f"noise bank {self.root} has no files of category {category!r} (it holds "
                            f"{list(self.categories)}); prepare a bank with that category in stage 1")
        return keys

    def path(self, key: str) -> str:
        try:
            return self._paths[key]
        except KeyError:
            raise DataError(f"noise bank {self.root} has no file {key!r} (a manifest naming it belongs to another "
                            f"bank; check the bank directory)") from None

    def num_samples(self, key: str) -> int:
        """Exact length at 16 kHz (files at other rates are measured after resampling, once)."""
        frames = self._frames.get(key)
        if frames is None:
            info = audio_info(self.path(key), key)
            frames = info.frames if info.sample_rate == SAMPLE_RATE else len(self.read(key))
            self._frames[key] = frames
        return frames

    def read(self, key: str) -> np.ndarray:
        """The whole file (used for RIRs, which are short)."""
        return self.load(key)

    def load(self, key: str, start: int = 0, num_samples: int | None = None) -> np.ndarray:
        """``num_samples`` samples (all when None) from ``start``: the one place a bank reads audio, so a bank
        stored elsewhere (an LMDB, :mod:`nawsv.integrations.wespeaker.augment`) overrides only this and
        :meth:`num_samples`."""
        return load_audio(self.path(key), key, start=start, num_samples=num_samples)

    def read_window(self, key: str, num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """A ``num_samples`` window at a random offset (drawn from ``rng``); short files wrap from offset 0."""
        frames = self.num_samples(key)
        offset = int(rng.integers(0, frames - num_samples + 1)) if frames > num_samples else 0
        return self.read_at(key, num_samples, offset), offset

    def read_at(self, key: str, num_samples: int, offset: int) -> np.ndarray:
        """The window :meth:`read_window` returned for this ``offset``, bit for bit."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        frames = self.num_samples(key)
        if frames <= num_samples:
            if offset != 0:
                raise DataError(f"noise {key!r} in {self.root}: offset {offset} is invalid for a file of {frames} "
                                f"samples that is wrap-repeated to {num_samples}; the manifest does not match the bank")
            return np.pad(self.load(key), (0, num_samples - frames), mode="wrap")
        if not 0 <= offset <= frames - num_samples:
            raise DataError(f"noise {key!r} in {self.root}: window [{offset}, {offset + num_samples}) lies outside "
                            f"its {frames} samples; the manifest does not match the bank")
        window = self.load(key, start=offset, num_samples=num_samples)
        if window.size != num_samples:
            raise DataError(f"noise {key!r} ({self.path(key)}): read {window.size} of {num_samples} samples at "
                            f"offset {offset}; the file changed since its header was read")
        return window
