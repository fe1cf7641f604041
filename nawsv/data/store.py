"""Random access to training utterances from a WeSpeaker ``raw.list`` or ``shard.list``.

Training reads random crops of random utterances. For raw lists that is a partial file read; for tar
shards the member offsets are indexed once (headers only), so shards are random-access too and both
list types feed the same map-style datasets, which keeps data loading a pure function of
(seed, epoch, item) and makes resumption exact.

The store is a handful of numpy arrays, not Python objects: at VoxCeleb2 size (1.09M utterances) a list of
key strings and a path dict cost about 600 MB per process, and DataLoader workers, which share the parent's
memory copy-on-write, copied every page whose reference counts an item touched, so each worker's private memory
grew over an epoch. Arrays have no per-element reference counts: a forked worker reads them without writing.
Opening a data directory writes the arrays next to its list once (``raw.list.index.npz``), so later opens
(every rank of every run) load them instead of parsing a million JSON lines.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import re
import tarfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from nawsv.data.audio import SAMPLE_RATE, audio_info, decode_audio, load_audio
from nawsv.formats.kaldi import read_table, text_lines
from nawsv.data.lists import read_raw_list, read_shard_list
from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import DataError, NawsvError

log = logging.getLogger(__name__)

LIST_TYPES = ("raw", "shard")
INDEX_VERSION = 1              # bump when the cached index layout changes
# raw.list lines as nawsv writes them; other spellings (escapes, field order, CR) go through json line by line
_RAW_LINE = re.compile(r'\{"key": "([^"\\\r\n]*)", "wav": "([^"\\\r\n]*)", "spk": "([^"\\\r\n]*)"\}')
_RAW_LINES = re.compile(f"^{_RAW_LINE.pattern}$", re.MULTILINE)
_TABLE_LINES = re.compile(r"^(\S+)[ \t]+(\S+)[ \t]*$", re.MULTILINE)      # "key value" (utt2dur)


class PackedStrings(Sequence[str]):
    """Strings as one UTF-8 byte buffer plus offsets: two arrays instead of one object per string."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self.data = data
        self.offsets = offsets

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> "PackedStrings":
        strings = list(strings)
        data = "".join(strings).encode("utf-8")
        if len(data) != sum(map(len, strings)):                   # not ASCII: byte lengths differ from lengths
            strings = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(strings) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, strings), dtype=np.int64, count=len(strings)), out=offsets[1:])
        return cls(np.frombuffer(data, dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"string index {index} out of range for {len(self)} strings")
        return self.data[self.offsets[index]:self.offsets[index + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedStrings):
            return np.array_equal(self.offsets, other.offsets) and np.array_equal(self.data, other.data)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PackedStrings({len(self)} strings, {len(self.data)} bytes)"

    def take(self, indices: np.ndarray) -> "PackedStrings":
        """The strings at ``indices`` (in that order), gathered without decoding them."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        offsets = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return PackedStrings(self.data[gather], offsets)


class _RawAudio:
    """Audio file paths as a table of distinct heads plus a per-utterance head number.

    A path is ``head + key`` when every path ends with its key (nawsv's and WeSpeaker's VoxCeleb lists:
    ``<root>/`` + ``id00012/21Uxsk56VDQ/00001.wav``), else ``directory/`` + its own file name.
    """

    def __init__(self, heads: PackedStrings, head: np.ndarray, tails: PackedStrings | None) -> None:
        self.heads = heads
        self.head = head
        self.tails = tails

    @classmethod
    def from_paths(cls, keys: Sequence[str], paths: Sequence[str]) -> "_RawAudio":
        key_suffix = all(p.endswith(k) for k, p in zip(keys, paths))
        if key_suffix:
            heads = [p[:len(p) - len(k)] for k, p in zip(keys, paths)]
            tails = None
        else:
            split = [p.rpartition("/") for p in paths]
            heads = [d + s for d, s, _ in split]
            tails = PackedStrings.from_strings(name for _, _, name in split)
        distinct = sorted(set(heads))
        if len(distinct) == 1:
            head = np.zeros(len(heads), dtype=np.int32)
        else:
            number = {h: i for i, h in enumerate(distinct)}
            head = np.fromiter(map(number.__getitem__, heads), dtype=np.int32, count=len(heads))
        return cls(PackedStrings.from_strings(distinct), head, tails)

    def path(self, index: int, keys: PackedStrings) -> str:
        tail = keys[index] if self.tails is None else self.tails[index]
        return self.heads[int(self.head[index])] + tail

    def take(self, indices: np.ndarray) -> "_RawAudio":
        return _RawAudio(self.heads, self.head[indices], None if self.tails is None else self.tails.take(indices))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"heads_data": self.heads.data, "heads_offsets": self.heads.offsets, "head": self.head}
        if self.tails is not None:
            out |= {"tails_data": self.tails.data, "tails_offsets": self.tails.offsets}
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "_RawAudio":
        tails = PackedStrings(arrays["tails_data"], arrays["tails_offsets"]) if "tails_data" in arrays else None
        return cls(PackedStrings(arrays["heads_data"], arrays["heads_offsets"]), arrays["head"], tails)


class _ShardAudio:
    """Where each utterance's audio bytes lie: shard number, byte offset and size."""

    def __init__(self, shards: PackedStrings, shard: np.ndarray, offset: np.ndarray, size: np.ndarray) -> None:
        self.shards = shards
        self.shard = shard
        self.offset = offset
        self.size = size

    def member(self, index: int) -> tuple[str, int, int]:
        return self.shards[int(self.shard[index])], int(self.offset[index]), int(self.size[index])

    def take(self, indices: np.ndarray) -> "_ShardAudio":
        return _ShardAudio(self.shards, self.shard[indices], self.offset[indices], self.size[indices])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"shards_data": self.shards.data, "shards_offsets": self.shards.offsets, "shard": self.shard,
                "offset": self.offset, "size": self.size}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "_ShardAudio":
        return cls(PackedStrings(arrays["shards_data"], arrays["shards_offsets"]), arrays["shard"],
                   arrays["offset"], arrays["size"])


class UtteranceStore:
    """Keys, speakers and audio access for a training list.

    ``labels[i]`` is utterance i's index into the sorted ``speaker_ids``; ``lengths`` (samples at 16 kHz, from
    ``utt2dur``, to the millisecond) is known when the store was opened from a data directory.
    """

    def __init__(self, keys: Sequence[str], speakers: Sequence[str], source: str,
                 paths: Mapping[str, str] | None = None,
                 members: Mapping[str, tuple[str, int, int]] | None = None) -> None:
        """A store from Python lists (small lists, tests); large lists come from :meth:`from_data_dir`."""
        if (paths is None) == (members is None):
            raise ValueError("give exactly one of paths (raw list) or members (shards)")
        packed = PackedStrings.from_strings(keys)
        if paths is not None:
            audio: _RawAudio | _ShardAudio = _RawAudio.from_paths(keys, [paths[k] for k in keys])
        else:
            audio = _shard_audio([members[k] for k in keys])
        speaker_ids, labels = _labels(speakers)
        self._assign(packed, labels, speaker_ids, source, audio, None)

    def _assign(self, keys: PackedStrings, labels: np.ndarray, speaker_ids: list[str], source: str,
                audio: _RawAudio | _ShardAudio, lengths: np.ndarray | None) -> None:
        self.keys = keys
        self.labels = labels
        self.speaker_ids = speaker_ids
        self.source = source
        self.lengths = lengths
        self._audio = audio

    @classmethod
    def _of(cls, keys: PackedStrings, labels: np.ndarray, speaker_ids: list[str], source: str,
            audio: _RawAudio | _ShardAudio, lengths: np.ndarray | None) -> "UtteranceStore":
        store = cls.__new__(cls)
        store._assign(keys, labels, speaker_ids, source, audio, lengths)
        return store

    @classmethod
    def from_raw_list(cls, path: str | Path, utt2dur: str | Path | None = None) -> "UtteranceStore":
        """Read a raw.list (and the lengths from ``utt2dur`` when given)."""
        with _gc_paused():
            keys, wavs, speakers = _parse_raw_list(Path(path))
            speaker_ids, labels = _labels(speakers)
            lengths = None if utt2dur is None else _lengths_from_utt2dur(Path(utt2dur), keys, Path(path))
            return cls._of(PackedStrings.from_strings(keys), labels, speaker_ids, str(path),
                           _RawAudio.from_paths(keys, wavs), lengths)

    @classmethod
    def from_shard_list(cls, path: str | Path, utt2dur: str | Path | None = None) -> "UtteranceStore":
        """Index the tar members of every shard of a shard.list (headers only)."""
        with _gc_paused():
            return cls._index_shards(Path(path), utt2dur)

    @classmethod
    def _index_shards(cls, path: Path, utt2dur: str | Path | None) -> "UtteranceStore":
        keys: list[str] = []
        speakers: list[str] = []
        members: dict[str, tuple[str, int, int]] = {}
        for shard in read_shard_list(path):
            try:
                with tarfile.open(shard, mode="r") as tar:
                    for member in tar:
                        key, _, suffix = member.name.rpartition(".")
                        if suffix == "spk":
                            speakers.append(tar.extractfile(member).read().decode("utf-8").strip())
                            keys.append(key)
                        elif suffix == "wav":
                            members[key] = (str(shard), member.offset_data, member.size)
            except (OSError, tarfile.TarError) as exc:
                raise DataError(f"shard {shard} is unreadable ({exc}); rerun stage 1 to rebuild the shards") from None
        missing = [k for k in keys if k not in members]
        if missing or len(set(keys)) != len(keys):
            raise DataError(f"{path}: shards hold {len(missing)} utterance(s) without audio or duplicate keys, "
                            f"e.g. {(missing or keys)[0]!r}; rerun stage 1")
        speaker_ids, labels = _labels(speakers)
        lengths = None if utt2dur is None else _lengths_from_utt2dur(Path(utt2dur), keys, Path(path))
        return cls._of(PackedStrings.from_strings(keys), labels, speaker_ids, str(path),
                       _shard_audio([members[k] for k in keys]), lengths)

    @classmethod
    def from_data_dir(cls, directory: str | Path, list_type: str = "raw") -> "UtteranceStore":
        """Open ``<dir>/raw.list`` or ``<dir>/shard.list`` with the lengths of ``<dir>/utt2dur``.

        The arrays are kept in ``<dir>/<list>.index.npz``, fingerprinted by the list's (and utt2dur's) size,
        modification time and checksum; a changed list is re-read, and a directory that cannot be written only
        costs the faster next open.
        """
        directory = Path(directory)
        if list_type not in LIST_TYPES:
            raise DataError(f"unknown list type {list_type!r}; choose from {list(LIST_TYPES)}")
        list_path = directory / f"{list_type}.list"
        utt2dur = directory / "utt2dur"
        utt2dur = utt2dur if utt2dur.is_file() else None
        fingerprint = _fingerprint(list_path, utt2dur, list_type)
        index_path = directory / f"{list_type}.list.index.npz"
        store = _load_index(index_path, fingerprint, str(list_path))
        if store is None:
            opener = cls.from_raw_list if list_type == "raw" else cls.from_shard_list
            store = opener(list_path, utt2dur)
            _save_index(index_path, fingerprint, store)
        return store

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def speakers(self) -> list[str]:
        """The speaker of every utterance (built on demand: one string object per utterance)."""
        return [self.speaker_ids[label] for label in self.labels.tolist()]

    def subset(self, indices: list[int]) -> "UtteranceStore":
        """A store of the utterances at ``indices`` (in that order), sharing this one's audio access."""
        take = np.asarray(indices, dtype=np.int64)
        return UtteranceStore._of(self.keys.take(take), self.labels[take], self.speaker_ids, self.source,
                                  self._audio.take(take), None if self.lengths is None else self.lengths[take])

    def num_samples(self, index: int) -> int:
        """Length in samples at 16 kHz: from utt2dur when the store has it, else the header (whole decode for
        shards)."""
        if self.lengths is not None:
            return int(self.lengths[index])
        if isinstance(self._audio, _RawAudio):
            info = audio_info(self.location(index), self.keys[index])
            return int(info.frames * SAMPLE_RATE / info.sample_rate)
        return len(self.read(index))

    def location(self, index: int) -> str:
        """Where the utterance's audio lies: its file, or ``<shard>@<byte offset>``."""
        if isinstance(self._audio, _RawAudio):
            return self._audio.path(index, self.keys)
        shard, offset, _ = self._audio.member(index)
        return f"{shard}@{offset}"

    def read(self, index: int) -> np.ndarray:
        """The whole utterance."""
        key = self.keys[index]
        if isinstance(self._audio, _RawAudio):
            return load_audio(self.location(index), key)
        shard, offset, size = self._audio.member(index)
        with open(shard, "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        return decode_audio(data, key, shard)

    def read_crop(self, index: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """A random ``length``-sample crop; shorter utterances are wrap-repeated (as the original reader).

        The window is drawn from :meth:`num_samples`; when utt2dur (rounded to 1 ms) overstates the length by a
        few samples and the window runs past the end, the crop is the last ``length`` samples. Raw and shard
        stores of one list give the same crops.
        """
        if isinstance(self._audio, _RawAudio):
            total = self.num_samples(index)
            if total > length:
                start = int(rng.integers(0, total - length + 1))
                key = self.keys[index]
                crop = load_audio(self.location(index), key, start=start, num_samples=length)
                return crop if len(crop) == length else fit_window(self.read(index), start, length)
            return wrap_to_length(self.read(index), length)
        samples = self.read(index)
        total = len(samples) if self.lengths is None else int(self.lengths[index])
        if total > length:
            return fit_window(samples, int(rng.integers(0, total - length + 1)), length)
        return wrap_to_length(samples, length)


def fit_window(samples: np.ndarray, start: int, length: int) -> np.ndarray:
    """``samples[start:start + length]``, moved back to end at the last sample when it would run past it."""
    if len(samples) <= length:
        return wrap_to_length(samples, length)
    start = min(start, len(samples) - length)
    return samples[start:start + length]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a million small objects are made: each collection would walk them
    all again (it tripled the parse time of a VoxCeleb2 list); they hold no cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _shard_audio(members: Sequence[tuple[str, int, int]]) -> _ShardAudio:
    table: dict[str, int] = {}
    shard = np.fromiter((table.setdefault(m[0], len(table)) for m in members), dtype=np.int32, count=len(members))
    offset = np.fromiter((m[1] for m in members), dtype=np.int64, count=len(members))
    size = np.fromiter((m[2] for m in members), dtype=np.int64, count=len(members))
    return _ShardAudio(PackedStrings.from_strings(table), shard, offset, size)


def _labels(speakers: Sequence[str]) -> tuple[list[str], np.ndarray]:
    speaker_ids = sorted(set(speakers))
    index = {spk: i for i, spk in enumerate(speaker_ids)}
    return speaker_ids, np.fromiter((index[s] for s in speakers), dtype=np.int32, count=len(speakers))


def _text(path: Path) -> str | None:
    """The file as UTF-8 text, or None when it cannot be read (the careful reader then names the problem)."""
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _line_count(text: str) -> int:
    return text.count("\n") + (not text.endswith("\n"))


def _parse_raw_list(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(keys, wavs, speakers) of a raw.list: one regular-expression pass when every line is spelt as nawsv
    writes it, else line by line; a list with any problem is re-read by :func:`nawsv.data.lists.read_raw_list`,
    whose error names the file and line."""
    text = _text(path)
    if text and "\r" not in text:
        rows = _RAW_LINES.findall(text)
        if len(rows) == _line_count(text):
            keys = [row[0] for row in rows]
            if len(set(keys)) == len(keys):
                return keys, [row[1] for row in rows], [row[2] for row in rows]
    return _parse_raw_lines(path)


def _parse_raw_lines(path: Path) -> tuple[list[str], list[str], list[str]]:
    if not path.is_file():
        read_raw_list(path)
    keys: list[str] = []
    wavs: list[str] = []
    speakers: list[str] = []
    match = _RAW_LINE.fullmatch
    try:
        for _, line in text_lines(path):
            fields = match(line)
            if fields is not None:
                key, wav, spk = fields.groups()
            else:
                obj = json.loads(line)
                key, wav, spk = obj["key"], obj["wav"], obj["spk"]
                if not all(isinstance(v, str) for v in (key, wav, spk)):
                    raise ValueError("non-string field")
            keys.append(key)
            wavs.append(wav)
            speakers.append(spk)
    except (ValueError, KeyError, TypeError, NawsvError):
        read_raw_list(path)
        raise
    if not keys or len(set(keys)) != len(keys):
        read_raw_list(path)
    return keys, wavs, speakers


def _read_durations(utt2dur: Path) -> tuple[list[str], list[str]]:
    """(keys, values) of utt2dur; anything but two fields on every line goes to the careful table reader."""
    text = _text(utt2dur)
    if text and "\r" not in text:
        rows = _TABLE_LINES.findall(text)
        if len(rows) == _line_count(text):
            keys = [row[0] for row in rows]
            if len(set(keys)) == len(keys):
                return keys, [row[1] for row in rows]
    table = read_table(utt2dur)
    return list(table), list(table.values())


def _lengths_from_utt2dur(utt2dur: Path, keys: Sequence[str], list_path: Path) -> np.ndarray:
    """Samples at 16 kHz of every utterance of the list, from utt2dur (in the list's order)."""
    dur_keys, values = _read_durations(utt2dur)
    if dur_keys != keys:
        table = dict(zip(dur_keys, values))
        missing = next((key for key in keys if key not in table), None)
        if missing is not None:
            raise DataError(f"{utt2dur}: no duration for utterance {missing!r} of {list_path}; rerun stage 1")
        dur_keys, values = keys, [table[key] for key in keys]
    try:
        seconds = np.array(values, dtype=np.float64)
    except ValueError:
        key, value = next((k, v) for k, v in zip(dur_keys, values) if not _is_number(v))
        raise DataError(f"{utt2dur}: duration of {key!r} is not a number: {value!r}") from None
    return np.rint(seconds * SAMPLE_RATE).astype(np.int32)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _fingerprint(list_path: Path, utt2dur: Path | None, list_type: str) -> str:
    """What the store is built from: size, modification time and CRC-32 of the list and utt2dur (a CRC reads a
    VoxCeleb2 list in a tenth of the time a cryptographic hash takes; this guards against edits, not attacks); for
    shards also each tar's size and modification time (checking the audio itself would read the whole corpus)."""
    parts = [f"nawsv-store-{INDEX_VERSION}-{list_type}"]
    for path in (list_path, utt2dur):
        if path is None:
            continue
        try:
            stat = path.stat()
            crc = 0
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 22):
                    crc = zlib.crc32(chunk, crc)
        except OSError:
            return ""                      # unreadable: the opener below raises the user error
        parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}:{crc:08x}")
    if list_type == "shard":
        for line in list_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                stat = Path(line.strip()).stat()
            except OSError:
                return ""
            parts.append(f"{line}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=20).hexdigest()


def _load_index(index_path: Path, fingerprint: str, source: str) -> UtteranceStore | None:
    if not fingerprint or not index_path.is_file():
        return None
    try:
        with np.load(index_path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); re-reading the list", index_path, exc)
        return None
    if str(arrays.pop("fingerprint")) != fingerprint:
        return None
    keys = PackedStrings(arrays["keys_data"], arrays["keys_offsets"])
    speaker_ids = list(PackedStrings(arrays["speakers_data"], arrays["speakers_offsets"]))
    audio = _ShardAudio.from_arrays(arrays) if "shard" in arrays else _RawAudio.from_arrays(arrays)
    return UtteranceStore._of(keys, arrays["labels"], speaker_ids, source, audio, arrays.get("lengths"))


def _save_index(index_path: Path, fingerprint: str, store: UtteranceStore) -> None:
    if not fingerprint:
        return
    speakers = PackedStrings.from_strings(store.speaker_ids)
    arrays = {"fingerprint": np.array(fingerprint), "keys_data": store.keys.data,
              "keys_offsets": store.keys.offsets, "labels": store.labels, "speakers_data": speakers.data,
              "speakers_offsets": speakers.offsets} | store._audio.arrays()
    if store.lengths is not None:
        arrays["lengths"] = store.lengths
    try:
        with atomic_open(index_path, "wb", encoding=None) as handle:
            np.savez(handle, **arrays)
    except NawsvError as exc:
        log.warning("the store index is not kept (%s); the next open reads the list again", exc)


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
