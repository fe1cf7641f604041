"""Kaldi data directories: ``wav.scp``, ``utt2spk``, ``spk2utt``, ``utt2dur`` and trial lists.

Readers validate as they go (duplicate keys, malformed lines, inconsistent files) and name the file
and line of every problem; writers sort keys the way Kaldi's ``validate_data_dir.sh`` expects and
write atomically.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import DataError


def is_utf8(text: str) -> bool:
    """Whether ``text`` (e.g. a path decoded by the OS with surrogate escapes) can go into a UTF-8 list."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(path: str | os.PathLike) -> str:
    """A path with its non-UTF-8 bytes shown as escapes (``\\xe9``), so messages and lists stay UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def require_utf8_path(path: str | os.PathLike, option: str, why: str) -> None:
    """Refuse, before any work, an output location that the UTF-8 lists written later could not name."""
    if not is_utf8(str(path)):
        raise DataError(f"{option} {printable_path(path)} is not valid UTF-8 ({why}); use a directory whose name "
                        f"is UTF-8 (rename it, e.g. with convmv)")


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of a UTF-8 text list; a missing, unreadable or non-UTF-8 file is a DataError naming it."""
    path = Path(path)
    try:
        handle = path.open("r", encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be opened: {exc}") from None
    with handle:
        try:
            for number, line in enumerate(handle, 1):
                yield number, line.rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not UTF-8 text ({exc}); Kaldi lists must be UTF-8") from None


def read_table(path: str | Path, min_fields: int = 2, max_fields: int | None = 2) -> dict[str, str]:
    """Read ``key value`` lines into an ordered dict; the value is the rest of the line.

    ``max_fields=None`` allows values with spaces (e.g. ``spk2utt``); duplicate keys, blank lines and
    lines with the wrong number of fields are errors that name the file and line.
    """
    path = Path(path)
    table: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for number, line in text_lines(path):
        fields = line.split()
        if not fields:
            raise DataError(f"{path}:{number}: empty line (remove it; Kaldi lists have one entry per line)")
        if len(fields) < min_fields or (max_fields is not None and len(fields) > max_fields):
            expected = f"{min_fields}" if max_fields == min_fields else f"at least {min_fields}"
            raise DataError(f"{path}:{number}: expected {expected} fields, got {len(fields)}: {line!r}")
        key = fields[0]
        if key in table:
            raise DataError(f"{path}:{number}: duplicate key {key!r} (first seen on line {first_seen[key]})")
        first_seen[key] = number
        table[key] = line.split(None, 1)[1].strip() if len(fields) > 1 else ""
    return table


def list_value_problem(value: str) -> str | None:
    """Why ``value`` (e.g. a path) cannot go into a Kaldi list, or None. Single spaces are fine; other whitespace
    is not: Kaldi and kaldiio keep a tab or two spaces in a row, WeSpeaker turns them into one space, and a line
    break ends the entry."""
    if value == " ".join(value.split()):
        return None
    return ("holds a tab, a line break, two spaces in a row or whitespace at either end, which readers of Kaldi "
            "lists do not read back alike; rename the file or folder")


def read_wav_scp(path: str | Path) -> dict[str, str]:
    """``wav.scp`` as Kaldi, kaldiio and WeSpeaker read it: the key, then the rest of the line (a path may hold
    spaces). Every reader of a wav.scp goes through here, so all agree on the same rule."""
    return read_table(path, max_fields=None)


def write_table(path: str | Path, table: Mapping[str, object] | Iterable[tuple[str, object]]) -> None:
    """Write ``key value`` lines sorted by key (C-locale order, as Kaldi tools require), atomically.

    A value may hold single spaces (read back as the rest of the line); see :func:`list_value_problem`.
    """
    items = table.items() if isinstance(table, Mapping) else table
    rows = sorted((str(k), str(v)) for k, v in items)
    for key, value in rows:
        if not key or any(c.isspace() for c in key):
            raise DataError(f"cannot write {path}: key {key!r} is empty or contains whitespace")
        problem = list_value_problem(value)
        if problem:
            raise DataError(f"cannot write {path}: the value of {key!r} ({value!r}) {problem}")
    with atomic_open(path) as handle:
        for key, value in rows:
            handle.write(f"{key} {value}\n")


def utt2spk_to_spk2utt(utt2spk: Mapping[str, str]) -> dict[str, list[str]]:
    """Invert ``utt2spk``; utterance lists are sorted."""
    spk2utt: dict[str, list[str]] = {}
    for utt in sorted(utt2spk):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return dict(sorted(spk2utt.items()))


@dataclasses.dataclass
class KaldiDir:
    """The tables of one Kaldi data directory (``utt2dur`` is optional)."""

    wav_scp: dict[str, str]
    utt2spk: dict[str, str]
    utt2dur: dict[str, float] | None = None

    @property
    def spk2utt(self) -> dict[str, list[str]]:
        return utt2spk_to_spk2utt(self.utt2spk)

    @property
    def speakers(self) -> list[str]:
        return sorted(set(self.utt2spk.values()))

    def __len__(self) -> int:
        return len(self.wav_scp)


def validate(data: KaldiDir, where: str) -> None:
    """Check that every utterance has audio and a speaker (and a duration when utt2dur exists)."""
    no_spk = [u for u in data.wav_scp if u not in data.utt2spk]
    if no_spk:
        raise DataError(f"{where}: {len(no_spk)} utterance(s) in wav.scp have no speaker in utt2spk, "
                        f"e.g. {no_spk[0]!r}; add them to utt2spk or remove them from wav.scp")
    no_wav = [u for u in data.utt2spk if u not in data.wav_scp]
    if no_wav:
        raise DataError(f"{where}: {len(no_wav)} utterance(s) in utt2spk have no entry in wav.scp, "
                        f"e.g. {no_wav[0]!r}")
    if data.utt2dur is not None:
        no_dur = [u for u in data.wav_scp if u not in data.utt2dur]
        if no_dur:
            raise DataError(f"{where}: {len(no_dur)} utterance(s) have no duration in utt2dur, e.g. {no_dur[0]!r}; "
                            f"rerun stage 1")
    for utt, path in data.wav_scp.items():
        if path.endswith("|"):
            raise DataError(f"{where}/wav.scp: utterance {utt!r} uses a pipe command ({path!r}); nawsv reads "
                            f"audio files directly: convert the audio to files first")


def read_kaldi_dir(directory: str | Path, need_utt2dur: bool = False) -> KaldiDir:
    """Load and validate ``wav.scp`` + ``utt2spk`` (+ ``utt2dur`` when present or required)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data directory {directory} does not exist; run stage 1 (data preparation) first")
    wav_scp = read_wav_scp(directory / "wav.scp")
    utt2spk = read_table(directory / "utt2spk")
    dur_path = directory / "utt2dur"
    utt2dur = None
    if dur_path.exists() or need_utt2dur:
        utt2dur = {}
        for utt, value in read_table(dur_path).items():
            try:
                utt2dur[utt] = float(value)
            except ValueError:
                raise DataError(f"{dur_path}: duration of {utt!r} is not a number: {value!r}") from None
    data = KaldiDir(wav_scp, utt2spk, utt2dur)
    validate(data, str(directory))
    return data


def write_kaldi_dir(directory: str | Path, data: KaldiDir) -> None:
    """Write ``wav.scp``, ``utt2spk``, ``spk2utt`` and (if known) ``utt2dur`` into ``directory``."""
    validate(data, str(directory))
    directory = Path(directory)
    write_table(directory / "wav.scp", data.wav_scp)
    write_table(directory / "utt2spk", data.utt2spk)
    write_table(directory / "spk2utt", {s: " ".join(u) for s, u in data.spk2utt.items()})
    if data.utt2dur is not None:
        write_table(directory / "utt2dur", {u: f"{d:.3f}" for u, d in data.utt2dur.items()})


@dataclasses.dataclass(frozen=True)
class Trial:
    """One verification trial; ``target`` is None for unlabelled lists."""

    enrol: str
    test: str
    target: bool | None


_LABELS = {"target": True, "nontarget": False, "1": True, "0": False}


def read_trials(path: str | Path) -> list[Trial]:
    """Read a trial list in Kaldi (``enrol test target|nontarget``), VoxCeleb (``1 enrol test``) or
    unlabelled (``enrol test``) form; the form must be the same on every line."""
    path = Path(path)
    trials: list[Trial] = []
    form = None
    for number, line in text_lines(path):
        fields = line.split()
        if not fields:
            raise DataError(f"{path}:{number}: empty line in trial list")
        if len(fields) == 3 and fields[0] in ("0", "1") and fields[2] not in _LABELS:
            this_form, trial = "voxceleb", Trial(fields[1], fields[2], fields[0] == "1")
        elif len(fields) == 3 and fields[2] in ("target", "nontarget"):
            this_form, trial = "kaldi", Trial(fields[0], fields[1], fields[2] == "target")
        elif len(fields) == 2:
            this_form, trial = "unlabelled", Trial(fields[0], fields[1], None)
        else:
            raise DataError(f"{path}:{number}: cannot parse trial {line!r}; expected 'enrol test target|nontarget', "
                            f"'1|0 enrol test' or 'enrol test'")
        if form is None:
            form = this_form
        elif form != this_form:
            raise DataError(f"{path}:{number}: trial {line!r} is in {this_form} form but earlier lines are in "
                            f"{form} form")
        trials.append(trial)
    if not trials:
        raise DataError(f"trial list {path} is empty")
    return trials


def write_trials(path: str | Path, trials: Iterable[Trial]) -> None:
    """Write trials in Kaldi form (``enrol test target|nontarget``), keeping their order."""
    with atomic_open(path) as handle:
        for trial in trials:
            if trial.target is None:
                handle.write(f"{trial.enrol} {trial.test}\n")
            else:
                handle.write(f"{trial.enrol} {trial.test} {'target' if trial.target else 'nontarget'}\n")


def check_trials_covered(trials: Iterable[Trial], keys: Iterable[str], trials_name: str, keys_name: str) -> None:
    """Raise if a trial names an utterance that ``keys`` (e.g. wav.scp or an embedding scp) lacks."""
    known = set(keys)
    missing: list[str] = []
    for trial in trials:
        for utt in (trial.enrol, trial.test):
            if utt not in known and utt not in missing:
                missing.append(utt)
    if missing:
        raise DataError(f"{trials_name}: {len(missing)} utterance(s) are not in {keys_name}, "
                        f"e.g. {', '.join(repr(m) for m in missing[:3])}; check that the trial list belongs to "
                        f"this test set")
