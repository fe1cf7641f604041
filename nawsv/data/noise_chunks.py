"""The released code's MUSAN chunking as a virtual index: 5-s windows with a 3-s hop, no copies on disk.

The released preprocessing (spec 5.3) cut every MUSAN file into 5-s windows every 3 s -- floor((len - 5 s) /
3 s) of them, so the last possible window is dropped -- and kept files shorter than 8 s whole; noise was then
drawn uniformly over these pieces (a long file weighs more than a short one) and a piece shorter than the
target was wrap-padded. :class:`ChunkedNoiseBank` reproduces that distribution over the original files: each
chunk is a key ``<file key>@<start>+<length>`` (samples at 16 kHz), read with a partial read of the file.
Keys, window offsets and replay behave exactly as for a :class:`~nawsv.data.noise_bank.NoiseBank`, so training
augmentation, stage-2 synthesis and its manifests use either bank unchanged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nawsv.data.audio import SAMPLE_RATE
from nawsv.data.noise_bank import NoiseBank
from nawsv.utils.errors import DataError

CHUNK_SAMPLES = 5 * SAMPLE_RATE          # released window: 5 s
HOP_SAMPLES = 3 * SAMPLE_RATE            # released hop: 3 s
WHOLE_BELOW_SAMPLES = 8 * SAMPLE_RATE    # files shorter than 8 s are one piece ("all.wav")


def chunk_spans(num_samples: int) -> list[tuple[int, int]]:
    """(start, length) of the released pieces of a file of ``num_samples`` samples."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_samples < WHOLE_BELOW_SAMPLES:
        return [(0, num_samples)]
    count = (num_samples - CHUNK_SAMPLES) // HOP_SAMPLES
    return [(i * HOP_SAMPLES, CHUNK_SAMPLES) for i in range(count)]


def chunk_key(key: str, start: int, length: int) -> str:
    return f"{key}@{start}+{length}"


def parse_chunk_key(chunk: str) -> tuple[str, int, int]:
    """``"<key>@<start>+<length>"`` -> (key, start, length)."""
    key, at, span = chunk.rpartition("@")
    start, plus, length = span.partition("+")
    if not (at and plus and start.isdigit() and length.isdigit()):
        raise DataError(f"noise key {chunk!r} is not a chunk key <file>@<start>+<length>; the manifest was written "
                        f"without musan_chunks, or the bank changed")
    return key, int(start), int(length)


class ChunkedNoiseBank:
    """A :class:`NoiseBank` whose keys are the released 5-s / 3-s-hop pieces of its files."""

    def __init__(self, bank: NoiseBank) -> None:
        self.bank = bank
        self.root = bank.root
        self._by_category: dict[str, tuple[str, ...]] = {}

    @property
    def categories(self) -> tuple[str, ...]:
        return self.bank.categories

    def keys(self, category: str | None = None) -> tuple[str, ...]:
        """Chunk keys of one category (files in sorted order, chunks in time order); all when None."""
        if category is None:
            return tuple(k for c in self.categories for k in self.keys(c))
        if category not in self._by_category:
            self._by_category[category] = tuple(
                chunk_key(key, start, length) for key in self.bank.keys(category)
                for start, length in chunk_spans(self.bank.num_samples(key)))
            if not self._by_category[category]:
                raise DataError(f"noise bank {self.root}: no {category!r} file is long enough for a chunk")
        return self._by_category[category]

    def path(self, chunk: str) -> str:
        return self.bank.path(parse_chunk_key(chunk)[0])

    def num_samples(self, chunk: str) -> int:
        key, start, length = parse_chunk_key(chunk)
        if start + length > self.bank.num_samples(key):
            raise DataError(f"noise chunk {chunk!r} in {self.root} lies outside its file of "
                            f"{self.bank.num_samples(key)} samples; the manifest does not match the bank")
        return length

    def read_window(self, chunk: str, num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """As :meth:`NoiseBank.read_window`, inside the chunk (offsets are relative to the chunk start)."""
        length = self.num_samples(chunk)
        offset = int(rng.integers(0, length - num_samples + 1)) if length > num_samples else 0
        return self.read_at(chunk, num_samples, offset), offset

    def read_at(self, chunk: str, num_samples: int, offset: int) -> np.ndarray:
        """The window :meth:`read_window` returned for ``offset``; a chunk not longer than it is wrap-padded."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        key, start, _ = parse_chunk_key(chunk)
        length = self.num_samples(chunk)
        if length <= num_samples:
            if offset != 0:
                raise DataError(f"noise chunk {chunk!r} in {self.root}: offset {offset} is invalid for a chunk that "
                                f"is wrap-repeated to {num_samples} samples; the manifest does not match the bank")
            piece = self.bank.load(key, start=start, num_samples=length)
            return np.pad(piece, (0, num_samples - length), mode="wrap")
        if not 0 <= offset <= length - num_samples:
            raise DataError(f"noise chunk {chunk!r} in {self.root}: window [{offset}, {offset + num_samples}) lies "
                            f"outside its {length} samples; the manifest does not match the bank")
        return self.bank.load(key, start=start + offset, num_samples=num_samples)


def open_noise_bank(path: str | Path, musan_chunks: bool = False) -> NoiseBank | ChunkedNoiseBank:
    """The bank dir at ``path``; with ``musan_chunks`` its released chunk index (spec 5.3)."""
    bank = NoiseBank.from_dir(path)
    return ChunkedNoiseBank(bank) if musan_chunks else bank
