"""Map-style training datasets whose items are pure functions of (seed, epoch, position).

The index passed to ``__getitem__`` carries everything an item needs (epoch, position in the epoch,
utterance indices, crop length), so items do not depend on which worker or rank reads them, and a resumed
epoch reproduces its batches exactly.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from nawsv.data.store import UtteranceStore
from nawsv.utils.errors import NawsvError
from nawsv.utils.seeding import rng_for

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class WarmupPairs(Dataset):
    """Item ``(epoch, position, utt1, utt2)`` -> (clean u1, noisy u2, clean u2, speaker label).

    u2 is corrupted on a copy, so the clean u2 for the teacher is never touched (the original's in-place
    noise injection handed the teacher the noisy signal, spec §3.2).
    """

    def __init__(self, store: UtteranceStore, augment: Augment, crop_samples: int, seed: int) -> None:
        self.store = store
        self.augment = augment
        self.crop_samples = crop_samples
        self.seed = seed

    def __getitem__(self, index: tuple[int, int, int, int]):
        epoch, position, first, second = index
        rng = rng_for(self.seed, "warmup-item", epoch, position)
        clean1 = self.store.read_crop(first, self.crop_samples, rng)
        clean2 = self.store.read_crop(second, self.crop_samples, rng)
        noisy2 = self.augment(clean2.copy(), rng)
        return (torch.from_numpy(np.ascontiguousarray(clean1)), torch.from_numpy(np.ascontiguousarray(noisy2)),
                torch.from_numpy(np.ascontiguousarray(clean2)), int(self.store.labels[first]))

    def __len__(self) -> int:
        return len(self.store)


class AugmentedCrops(Dataset):
    """Item ``(epoch, position, utt, crop_samples)`` -> (augmented crop, speaker label)."""

    def __init__(self, store: UtteranceStore, augment: Augment, seed: int) -> None:
        self.store = store
        self.augment = augment
        self.seed = seed

    def __getitem__(self, index: tuple[int, int, int, int]):
        epoch, position, utt, crop_samples = index
        rng = rng_for(self.seed, "finetune-item", epoch, position)
        crop = self.augment(self.store.read_crop(utt, crop_samples, rng), rng)
        return torch.from_numpy(np.ascontiguousarray(crop)), int(self.store.labels[utt])

    def __len__(self) -> int:
        return len(self.store)


class FixedBatches(Sampler):
    """A batch sampler over a precomputed list of index batches."""

    def __init__(self, batches: Sequence[list]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


class _Failed:
    """A user error met while loading an item, carried out of the worker to be raised in the main process."""

    def __init__(self, error: NawsvError) -> None:
        self.error = error


class _Guarded(Dataset):
    """Returns a user error (bad audio) as an item instead of raising it inside a worker, where DataLoader would
    wrap its message in the worker's traceback."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, index: Any) -> Any:
        try:
            return self.dataset[index]
        except NawsvError as exc:
            return _Failed(exc)

    def __len__(self) -> int:
        return len(self.dataset)


def _collate(items: list) -> Any:
    failed = next((item for item in items if isinstance(item, _Failed)), None)
    return failed if failed is not None else default_collate(items)


class _Batches:
    """Iterates a DataLoader and raises a loading error as the original one-line user error."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if isinstance(batch, _Failed):
                raise batch.error
            yield batch


def make_loader(dataset: Dataset, batches: Sequence[list], num_workers: int, pin_memory: bool) -> Iterable[Any]:
    """Batches replayed from ``batches`` by a DataLoader; workers stay single-threaded, item seeds come from the
    indices, and bad audio stops training with the AudioError that names the utterance and file."""
    return _Batches(DataLoader(_Guarded(dataset), batch_sampler=FixedBatches(batches), num_workers=num_workers,
                               pin_memory=pin_memory, worker_init_fn=_worker_init, collate_fn=_collate,
                               generator=torch.Generator().manual_seed(0)))
