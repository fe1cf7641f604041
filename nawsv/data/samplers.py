"""Epoch plans for training: which utterances form each global batch, for every rank.

A plan is a pure function of (seed, epoch) and the list, so any rank and any resumed run computes
the same batches; a rank takes its contiguous share of each global batch.
"""
from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np

from nawsv.utils.errors import ConfigError
from nawsv.utils.seeding import rng_for

PAIR_CLASH = ("defer", "drop")


def shuffled_pairs(labels: np.ndarray, max_utts_per_speaker: int, seed: int,
                   epoch: int) -> list[tuple[int, int, int]]:
    """(speaker, utt1, utt2) pairs in the epoch's order: per speaker the utterances are shuffled, capped at
    ``max_utts_per_speaker`` (rounded down to even) and cut into pairs; then all pairs are shuffled."""
    rng = rng_for(seed, "pairs", epoch)
    by_speaker: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        by_speaker.setdefault(label, []).append(index)
    pairs: list[tuple[int, int, int]] = []
    for label in sorted(by_speaker):
        utts = rng.permutation(by_speaker[label])[:max_utts_per_speaker]
        usable = len(utts) - len(utts) % 2
        pairs += [(label, int(utts[i]), int(utts[i + 1])) for i in range(0, usable, 2)]
    return [pairs[i] for i in rng.permutation(len(pairs))]


def pack_pairs(pairs: Sequence[tuple[int, int, int]], speakers_per_batch: int,
               clash: str = "defer") -> list[list[tuple[int, int]]]:
    """Pack ordered pairs greedily into batches of distinct speakers; the last incomplete batch is dropped.

    A pair whose speaker is already in the batch waits for the next batch (``defer``), so more of the data
    is used; the released sampler (``drop``, spec 3.1) dropped it.
    """
    if clash not in PAIR_CLASH:
        raise ConfigError(f"unknown pair_clash {clash!r}; choose from {list(PAIR_CLASH)}")
    batches: list[list[tuple[int, int]]] = []
    batch: list[tuple[int, int]] = []
    present: set[int] = set()
    waiting: deque[tuple[int, int, int]] = deque()

    def add(pair: tuple[int, int, int]) -> None:
        batch.append((pair[1], pair[2]))
        present.add(pair[0])

    def fill_from_waiting() -> None:
        for _ in range(len(waiting)):
            pair = waiting.popleft()
            if len(batch) < speakers_per_batch and pair[0] not in present:
                add(pair)
            else:
                waiting.append(pair)

    def flush_full() -> None:
        while len(batch) == speakers_per_batch:
            batches.append(list(batch))
            batch.clear()
            present.clear()
            fill_from_waiting()

    for pair in pairs:
        if pair[0] in present:
            if clash == "defer":
                waiting.append(pair)
        else:
            add(pair)
        flush_full()
    return batches


def speaker_pair_batches(labels: np.ndarray, speakers_per_batch: int, max_utts_per_speaker: int,
                         seed: int, epoch: int, clash: str = "defer") -> list[list[tuple[int, int]]]:
    """Global warm-up batches: ``speakers_per_batch`` pairs of same-speaker utterances, all speakers distinct
    (:func:`shuffled_pairs` packed by :func:`pack_pairs`)."""
    num_speakers = len(np.unique(labels))
    if num_speakers < speakers_per_batch:
        raise ConfigError(f"speakers_per_batch={speakers_per_batch} but the training list has only "
                          f"{num_speakers} speakers; lower speakers_per_batch")
    return pack_pairs(shuffled_pairs(labels, max_utts_per_speaker, seed, epoch), speakers_per_batch, clash)


def shuffled_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Global fine-tune batches: a fresh permutation per epoch, incomplete last batch dropped."""
    if num_items < batch_size:
        raise ConfigError(f"batch_size={batch_size} exceeds the {num_items} training utterances; lower batch_size")
    order = rng_for(seed, "utterances", epoch).permutation(num_items)
    usable = num_items - num_items % batch_size
    return [order[i:i + batch_size].tolist() for i in range(0, usable, batch_size)]


def rank_share(batch: list, rank: int, world_size: int) -> list:
    """The contiguous part of a global batch that ``rank`` processes."""
    if len(batch) % world_size:
        raise ConfigError(f"global batch of {len(batch)} does not split over {world_size} processes; "
                          f"choose a batch size divisible by the number of processes")
    share = len(batch) // world_size
    return batch[rank * share:(rank + 1) * share]
