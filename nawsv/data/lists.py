"""WeSpeaker-format training lists: ``raw.list`` (JSON lines) and ``shard.list`` (tar shards).

``raw.list``: one JSON object per line with ``key``, ``wav`` (path) and ``spk``.
``shard.list``: one tar path per line; each tar holds ``<key>.spk`` (UTF-8 speaker id) and
``<key>.wav`` (the original audio file bytes) for consecutive utterances, as WeSpeaker's
``make_shard_list.py`` writes them, so WeSpeaker's loaders read nawsv shards and vice versa.
"""
from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from nawsv.formats.kaldi import text_lines
from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import DataError


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One training item: key, audio path and speaker id."""

    key: str
    wav: str
    spk: str


def write_raw_list(path: str | Path, utterances: Iterable[Utterance]) -> None:
    """Write a raw.list (JSON lines, sorted by key)."""
    with atomic_open(path) as handle:
        for utt in sorted(utterances, key=lambda u: u.key):
            handle.write(json.dumps({"key": utt.key, "wav": utt.wav, "spk": utt.spk}, ensure_ascii=False) + "\n")


def read_raw_list(path: str | Path) -> list[Utterance]:
    """Read a raw.list, naming file and line of malformed or duplicate entries."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; run stage 1 (data preparation) first")
    items: list[Utterance] = []
    seen: set[str] = set()
    for number, line in text_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in ("key", "wav", "spk")):
            raise DataError(f"{path}:{number}: each line needs string fields 'key', 'wav' and 'spk'")
        if obj["key"] in seen:
            raise DataError(f"{path}:{number}: duplicate key {obj['key']!r}; remove the repeated line (or rerun "
                            f"stage 1)")
        seen.add(obj["key"])
        items.append(Utterance(obj["key"], obj["wav"], obj["spk"]))
    if not items:
        raise DataError(f"{path} is empty")
    return items


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: str | Path, utterances: Sequence[Utterance]) -> None:
    """Write one tar shard atomically (deterministic bytes: fixed mtime/owner, given order)."""
    with atomic_open(path, "wb", encoding=None) as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for utt in utterances:
                try:
                    audio = Path(utt.wav).read_bytes()
                except OSError as exc:
                    raise DataError(f"utterance {utt.key!r}: cannot read {utt.wav} for sharding ({exc})") from None
                _add_member(tar, f"{utt.key}.spk", utt.spk.encode("utf-8"))
                _add_member(tar, f"{utt.key}.wav", audio)


def shard_groups(utterances: Sequence[Utterance], shard_size: int) -> list[list[Utterance]]:
    """Split sorted utterances into consecutive groups of ``shard_size``."""
    ordered = sorted(utterances, key=lambda u: u.key)
    return [ordered[i:i + shard_size] for i in range(0, len(ordered), shard_size)]


def iter_shard(path: str | Path) -> Iterator[tuple[str, str, bytes]]:
    """Yield ``(key, spk, audio_bytes)`` for each utterance of a tar shard."""
    path = Path(path)
    try:
        tar = tarfile.open(path, mode="r")
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"shard {path} cannot be opened ({exc}); rerun stage 1 to rebuild the shards") from None
    current: str | None = None
    parts: dict[str, bytes] = {}

    def finish() -> tuple[str, str, bytes]:
        if set(parts) != {"spk", "wav"}:
            raise DataError(f"shard {path}: utterance {current!r} has members {sorted(parts)}, expected spk and wav")
        return current, parts["spk"].decode("utf-8").strip(), parts["wav"]

    with tar:
        try:
            for member in tar:
                if not member.isfile():
                    continue
                key, dot, suffix = member.name.rpartition(".")
                if not dot:
                    raise DataError(f"shard {path}: member {member.name!r} has no .spk/.wav suffix")
                if key != current:
                    if current is not None:
                        yield finish()
                    current, parts = key, {}
                parts[suffix] = tar.extractfile(member).read()
        except tarfile.TarError as exc:
            raise DataError(f"shard {path} is corrupt ({exc}); rerun stage 1 to rebuild the shards") from None
        if current is not None:
            yield finish()


def read_shard_list(path: str | Path) -> list[Path]:
    """Read shard.list (one tar path per line) and check the shards exist."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; run stage 1 with shards enabled")
    shards = []
    for number, line in text_lines(path):
        line = line.strip()
        if not line:
            raise DataError(f"{path}:{number}: empty line")
        if not Path(line).is_file():
            raise DataError(f"{path}:{number}: shard {line} does not exist")
        shards.append(Path(line))
    return shards
