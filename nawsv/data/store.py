"""Random access to training utterances from a WeSpeaker ``raw.list`` or ``shard.list``.

Training reads random crops of random utterances. For raw lists that is a partial file read; for tar
shards the member offsets are indexed once (headers only), so shards are random-access too and both
list types feed the same map-style datasets, which keeps data loading a pure function of
(seed, epoch, item) and makes resumption exact.
"""
from __future__ import annotations

import dataclasses
import tarfile
from pathlib import Path

import numpy as np

from nawsv.data.audio import SAMPLE_RATE, audio_info, decode_audio, load_audio
from nawsv.data.lists import read_raw_list, read_shard_list
from nawsv.utils.errors import DataError


@dataclasses.dataclass(frozen=True)
class _Member:
    shard: str
    offset: int
    size: int


class UtteranceStore:
    """Keys, speakers and audio access for a training list."""

    def __init__(self, keys: list[str], speakers: list[str], source: str,
                 paths: dict[str, str] | None = None, members: dict[str, _Member] | None = None) -> None:
        self.keys = keys
        self.speakers = speakers
        self.source = source
        self._paths = paths
        self._members = members
        self._lengths: dict[int, int] = {}
        self.speaker_ids = sorted(set(speakers))
        index = {spk: i for i, spk in enumerate(self.speaker_ids)}
        self.labels = np.array([index[s] for s in speakers], dtype=np.int64)

    @classmethod
    def from_raw_list(cls, path: str | Path) -> "UtteranceStore":
        utts = read_raw_list(path)
        return cls([u.key for u in utts], [u.spk for u in utts], str(path), paths={u.key: u.wav for u in utts})

    @classmethod
    def from_shard_list(cls, path: str | Path) -> "UtteranceStore":
        keys: list[str] = []
        speakers: list[str] = []
        members: dict[str, _Member] = {}
        for shard in read_shard_list(path):
            try:
                with tarfile.open(shard, mode="r") as tar:
                    for member in tar:
                        key, _, suffix = member.name.rpartition(".")
                        if suffix == "spk":
                            speakers.append(tar.extractfile(member).read().decode("utf-8").strip())
                            keys.append(key)
                        elif suffix == "wav":
                            members[key] = _Member(str(shard), member.offset_data, member.size)
            except (OSError, tarfile.TarError) as exc:
                raise DataError(f"shard {shard} is unreadable ({exc}); rerun stage 1 to rebuild the shards") from None
        missing = [k for k in keys if k not in members]
        if missing or len(set(keys)) != len(keys):
            raise DataError(f"{path}: shards hold {len(missing)} utterance(s) without audio or duplicate keys, "
                            f"e.g. {(missing or keys)[0]!r}; rerun stage 1")
        return cls(keys, speakers, str(path), members=members)

    @classmethod
    def from_data_dir(cls, directory: str | Path, list_type: str = "raw") -> "UtteranceStore":
        """Open ``<dir>/raw.list`` or ``<dir>/shard.list``."""
        directory = Path(directory)
        if list_type == "raw":
            return cls.from_raw_list(directory / "raw.list")
        if list_type == "shard":
            return cls.from_shard_list(directory / "shard.list")
        raise DataError(f"unknown list type {list_type!r}; choose from ['raw', 'shard']")

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, indices: list[int]) -> "UtteranceStore":
        """A store of the utterances at ``indices`` (in that order), sharing this one's audio access."""
        keys = [self.keys[i] for i in indices]
        return UtteranceStore(keys, [self.speakers[i] for i in indices], self.source, paths=self._paths,
                              members=self._members)

    def num_samples(self, index: int) -> int:
        """Length in samples at 16 kHz (header read; whole decode for shards), remembered per utterance."""
        length = self._lengths.get(index)
        if length is None:
            key = self.keys[index]
            if self._paths is not None:
                info = audio_info(self._paths[key], key)
                length = int(info.frames * SAMPLE_RATE / info.sample_rate)
            else:
                length = len(self.read(index))
            self._lengths[index] = length
        return length

    def read(self, index: int) -> np.ndarray:
        """The whole utterance."""
        key = self.keys[index]
        if self._paths is not None:
            return load_audio(self._paths[key], key)
        member = self._members[key]
        with open(member.shard, "rb") as handle:
            handle.seek(member.offset)
            data = handle.read(member.size)
        return decode_audio(data, key, member.shard)

    def read_crop(self, index: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """A random ``length``-sample crop; shorter utterances are wrap-repeated (as the original reader)."""
        key = self.keys[index]
        if self._paths is not None:
            total = self.num_samples(index)
            if total > length:
                start = int(rng.integers(0, total - length + 1))
                return load_audio(self._paths[key], key, start=start, num_samples=length)
            return wrap_to_length(load_audio(self._paths[key], key), length)
        return random_crop(self.read(index), length, rng)


def wrap_to_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Repeat ``samples`` cyclically to exactly ``length`` samples."""
    if len(samples) >= length:
        return samples[:length]
    return np.resize(samples, length).astype(np.float32, copy=False)


def random_crop(samples: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform random window of ``length`` samples, or the wrap-repeated signal when shorter."""
    if len(samples) <= length:
        return wrap_to_length(samples, length)
    start = int(rng.integers(0, len(samples) - length + 1))
    return samples[start:start + length]
