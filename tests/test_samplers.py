"""Training batch plans and the utterance store (raw and shard lists)."""
from pathlib import Path

import numpy as np
import pytest

from nawsv.data.prepare import PrepareConfig, prepare_speaker_set
from nawsv.data.samplers import rank_share, shuffled_batches, speaker_pair_batches
from nawsv.data.store import UtteranceStore, random_crop, wrap_to_length
from nawsv.utils.errors import ConfigError
from nawsv.utils.seeding import rng_for


def test_pair_batches_distinct_speakers_and_no_reuse() -> None:
    labels = np.repeat(np.arange(12), [9, 7, 7, 6, 5, 5, 4, 4, 4, 3, 2, 2])
    batches = speaker_pair_batches(labels, speakers_per_batch=4, max_utts_per_speaker=6, seed=3, epoch=0)
    used = [u for batch in batches for pair in batch for u in pair]
    assert len(used) == len(set(used))
    for batch in batches:
        assert len(batch) == 4
        speakers = [labels[a] for a, _ in batch]
        assert len(set(speakers)) == 4
        assert all(labels[a] == labels[b] for a, b in batch)
    per_speaker = np.bincount(labels[used], minlength=12)
    assert per_speaker.max() <= 6                                  # the cap holds
    # brute-force bound: pairs available = sum(min(n, cap) // 2); at most B-1 pairs per speaker can be stranded
    available = sum(min(n, 6) // 2 for n in np.bincount(labels))
    assert available - len(batches) * 4 < 4 + 4                   # only the last partial batch (and a few clashes) lost


def test_pair_batches_are_a_function_of_seed_and_epoch() -> None:
    labels = np.repeat(np.arange(8), 6)
    a = speaker_pair_batches(labels, 4, 500, seed=1, epoch=2)
    assert a == speaker_pair_batches(labels, 4, 500, seed=1, epoch=2)
    assert a != speaker_pair_batches(labels, 4, 500, seed=1, epoch=3)


def test_too_few_speakers() -> None:
    with pytest.raises(ConfigError, match="only 3 speakers"):
        speaker_pair_batches(np.repeat(np.arange(3), 4), 4, 500, 0, 0)


def test_shuffled_batches_and_rank_share() -> None:
    batches = shuffled_batches(23, 6, seed=0, epoch=1)
    flat = [i for b in batches for i in b]
    assert len(batches) == 3 and len(set(flat)) == 18
    shares = [rank_share(batches[0], r, 3) for r in range(3)]
    assert sum(shares, []) == batches[0]
    with pytest.raises(ConfigError, match="does not split over 4 processes"):
        rank_share(batches[0], 0, 4)


def test_wrap_and_crop() -> None:
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(wrap_to_length(x, 12), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    long = np.arange(100, dtype=np.float32)
    crop = random_crop(long, 10, rng_for(0))
    assert len(crop) == 10 and np.all(np.diff(crop) == 1)


def test_store_raw_and_shard_agree(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    prepare_speaker_set(tiny_corpus["voxceleb"] / "dev" / "wav", tmp_path / "dev",
                        PrepareConfig(nj=1, shards=True, shard_size=5))
    raw = UtteranceStore.from_data_dir(tmp_path / "dev", "raw")
    shard = UtteranceStore.from_data_dir(tmp_path / "dev", "shard")
    assert raw.keys == shard.keys and raw.speakers == shard.speakers
    np.testing.assert_array_equal(raw.labels, shard.labels)
    for index in range(len(raw)):
        np.testing.assert_array_equal(raw.read(index), shard.read(index))
        for length in (4000, 80000):                                # shorter and longer than the utterance
            a = raw.read_crop(index, length, rng_for("crop", index, length))
            b = shard.read_crop(index, length, rng_for("crop", index, length))
            np.testing.assert_array_equal(a, b)
            assert len(a) == length
