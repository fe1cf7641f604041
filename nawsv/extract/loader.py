"""Audio of a list of keys, loaded ahead of the model by DataLoader worker processes, in key order."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from nawsv.data.sources import AudioSource, open_audio_source
from nawsv.utils.errors import NawsvError


class KeyedAudio(Dataset):
    """(key, samples) for each key; a user error is returned, not raised, so the main process re-raises it as is."""

    def __init__(self, data_dir: Path, keys: Sequence[str], source: AudioSource | None = None) -> None:
        self.data_dir = data_dir
        self.keys = list(keys)
        self._source = source

    def __getstate__(self) -> dict:
        # Workers open their own reader (cheap), so nothing unpicklable crosses the process boundary.
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray | NawsvError]:
        key = self.keys[index]
        try:
            if self._source is None:
                self._source = open_audio_source(self.data_dir)
            return key, self._source.load(key)
        except NawsvError as exc:
            return key, exc


def _as_is(item):
    return item


def iterate_audio(data_dir: Path, keys: Sequence[str], num_workers: int,
                  source: AudioSource | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (key, samples) in the order of ``keys``; bad audio raises the AudioError naming key and file."""
    dataset = KeyedAudio(data_dir, keys, source)
    if num_workers == 0 or len(keys) < 2:
        items = (dataset[i] for i in range(len(dataset)))
    else:
        items = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=min(num_workers, len(keys)),
                           collate_fn=_as_is)
    for key, samples in items:
        if isinstance(samples, NawsvError):
            raise samples
        yield key, samples
