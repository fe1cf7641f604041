"""Stage 1: turn corpora on disk into Kaldi data directories and WeSpeaker lists.

Corpus layouts follow the real distributions: VoxCeleb ``<wav_root>/<speaker>/<video>/<utt>.wav``,
MUSAN ``musan/{noise,music,speech}/<subset>/<name>-NNNN.wav``, RIRS_NOISES ``simulated_rirs/**.wav`` and a
flat Nonspeech100 folder. Each output directory is built under a temporary name and swapped into
place, so a rerun is idempotent and a killed run never leaves a half directory behind.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Literal, Sequence

from nawsv.data.audio import SAMPLE_RATE, AudioInfo, audio_info
from nawsv.formats.kaldi import (KaldiDir, Trial, is_utf8, list_value_problem, printable_path, read_trials,
                              write_kaldi_dir, write_table, write_trials)
from nawsv.data.lists import Utterance, shard_groups, write_raw_list, write_shard
from nawsv.utils.atomic import atomic_directory, atomic_write_text
from nawsv.utils.errors import AudioError, ConfigError, DataError, OutputError
from nawsv.utils.lock import sibling_lock
from nawsv.utils.progress import progress

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
UNREADABLE_SUFFIXES = (".m4a", ".aac")           # AAC: libsndfile cannot read it; convert first (nawsv.data.m4a)
MUSAN_CATEGORIES = ("noise", "music", "speech")


@dataclasses.dataclass(frozen=True)
class KnownSize:
    """Published size of a corpus part, to warn when a local copy is incomplete or different."""

    utterances: int
    speakers: int


# VoxCeleb sizes as published with the corpora (tabulated in PaddleSpeech examples/voxceleb/README.md; the
# NAW-SV code asserts the same dev counts); vox1_all = dev + test, the set the Vox1-E/H trials draw from.
KNOWN_SETS = {
    "vox1_dev": KnownSize(148_642, 1_211),
    "vox1_test": KnownSize(4_874, 40),
    "vox1_all": KnownSize(153_516, 1_251),
    "vox2_dev": KnownSize(1_092_009, 5_994),
}
# Trial counts of the official lists, by file name ("2" = the cleaned lists).
OFFICIAL_TRIAL_COUNTS = {
    "veri_test.txt": 37_720, "veri_test2.txt": 37_611,
    "list_test_all.txt": 581_480, "list_test_all2.txt": 579_818,
    "list_test_hard.txt": 552_536, "list_test_hard2.txt": 550_894,
}


@dataclasses.dataclass
class PrepareConfig:
    """Options of stage 1 (``conf/prepare.yaml``)."""

    nj: int = 4                                   # processes probing audio headers and writing shards
    shards: bool = False                          # also write tar shards + shard.list (a copy of the corpus)
    shard_size: int = 1000                        # utterances per shard
    on_bad_audio: Literal["error", "skip"] = "error"   # skip: leave unreadable/empty/short files and non-UTF-8
                                                       # names out, listed in bad_audio.txt and counted in the log
    on_rate_mismatch: Literal["resample", "error"] = "resample"
    min_duration: float = 0.5                     # seconds; shorter utterances count as bad audio

    def __post_init__(self) -> None:
        if self.nj < 1:
            raise ValueError(f"nj must be >= 1, got {self.nj}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.min_duration < 0:
            raise ValueError(f"min_duration must be >= 0, got {self.min_duration}")


def _audio_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"corpus directory {root} does not exist; check the path given to stage 1")
    files, unreadable = [], []
    for path in root.rglob("*"):
        suffix = path.suffix.lower()
        if suffix in AUDIO_SUFFIXES and path.is_file():
            files.append(path)
        elif suffix in UNREADABLE_SUFFIXES and path.is_file():
            unreadable.append(path)
    if unreadable:
        raise DataError(f"{len(unreadable)} AAC file(s) under {root} (e.g. {unreadable[0]}) cannot be read by "
                        f"soundfile; convert the tree once with `python -m nawsv.bin.prepare_data convert "
                        f"--src_root {root} --dst_root <new folder>` and prepare the converted folder")
    if not files:
        raise DataError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) found under {root}")
    for path in files:                    # refused before any work: wav.scp must read back as written
        problem = list_value_problem(str(path))
        if problem:
            raise DataError(f"{printable_path(path)}: the path {problem}")
    return sorted(files)


def scan_speaker_tree(wav_root: str | Path) -> tuple[dict[str, str], dict[str, str]]:
    """Map ``<spk>/<video>/<utt>`` keys to absolute paths and speakers (VoxCeleb layout)."""
    wav_root = Path(wav_root).resolve()
    wav_scp: dict[str, str] = {}
    utt2spk: dict[str, str] = {}
    for path in _audio_files(wav_root):
        parts = path.relative_to(wav_root).parts
        if len(parts) != 3:
            raise DataError(f"{path}: expected <wav_root>/<speaker>/<video>/<utterance> under {wav_root}; "
                            f"point --wav_root at the folder that holds the speaker folders")
        key = "/".join(parts)
        if any(c.isspace() for c in key):
            raise DataError(f"{path}: whitespace in the relative path {key!r} cannot be a Kaldi key; rename it")
        wav_scp[key] = str(path)
        utt2spk[key] = parts[0]
    return wav_scp, utt2spk


def scan_speaker_trees(wav_roots: Sequence[str | Path]) -> tuple[dict[str, str], dict[str, str]]:
    """Merge several VoxCeleb-layout trees (e.g. Vox1 dev + test for the Vox1-E/H trials) into one set."""
    wav_scp: dict[str, str] = {}
    utt2spk: dict[str, str] = {}
    for root in wav_roots:
        scp, spk = scan_speaker_tree(root)
        clash = next((key for key in scp if key in wav_scp), None)
        if clash is not None:
            raise DataError(f"utterance {clash!r} exists in two trees ({wav_scp[clash]} and {scp[clash]}); the "
                            f"trees given together must hold different speakers")
        wav_scp.update(scp)
        utt2spk.update(spk)
    return wav_scp, utt2spk


def known_size(name: str) -> KnownSize:
    """The published size of corpus part ``name``; an unknown name is an error listing the known ones."""
    if name not in KNOWN_SETS:
        raise ConfigError(f"unknown corpus {name!r} to check against; choose from {sorted(KNOWN_SETS)}")
    return KNOWN_SETS[name]


def check_known_size(name: str, data: KaldiDir, trials: Iterable[tuple[str, Path, int]] = ()) -> list[str]:
    """Compare a prepared set (and its trial lists) with the published sizes; warn, never fail, on a mismatch.

    ``trials`` holds (list name, source file, trial count); lists whose file name is an official VoxCeleb list
    are checked. Returns the warnings (an incomplete download or ``on_bad_audio: skip`` shows up here).
    """
    known = known_size(name)
    found = KnownSize(len(data), len(data.speakers))
    warnings = []
    if found != known:
        warnings.append(f"{name}: found {found.utterances:,} utterances of {found.speakers:,} speakers, the "
                        f"published corpus has {known.utterances:,} of {known.speakers:,}; check that the download "
                        f"is complete (or that the difference is intended)")
    for list_name, path, count in trials:
        expected = OFFICIAL_TRIAL_COUNTS.get(Path(path).name)
        if expected is not None and count != expected:
            warnings.append(f"trial list {list_name} ({path}): {count:,} trials, the official {Path(path).name} "
                            f"has {expected:,}")
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def _probe(item: tuple[str, str]) -> tuple[str, AudioInfo | str]:
    key, path = item
    try:
        return key, audio_info(path, key)
    except AudioError as exc:
        return key, str(exc)


def probe_audio(wav_scp: dict[str, str], cfg: PrepareConfig, what: str) -> tuple[dict[str, float], list[str]]:
    """Read every header (in ``cfg.nj`` processes); return durations and the problems found.

    Problems are raised at once when ``on_bad_audio`` is ``error``; with ``skip`` they are returned so the
    caller leaves those utterances out and records them. A file whose name is not valid UTF-8 is a problem
    too: Kaldi lists are UTF-8 text and could not name it.
    """
    items = sorted(wav_scp.items())
    problems: list[str] = [f"{printable_path(path)}: the file name is not valid UTF-8, so UTF-8 Kaldi lists cannot "
                           f"name it; rename it (e.g. convmv -r -f latin1 -t utf8 --notest <corpus>)"
                           for key, path in items if not (is_utf8(key) and is_utf8(path))]
    if problems:
        items = [(key, path) for key, path in items if is_utf8(key) and is_utf8(path)]
    results: list[tuple[str, AudioInfo | str]]
    if cfg.nj > 1 and len(items) > 2000:
        with ProcessPoolExecutor(cfg.nj) as pool:
            results = list(progress(pool.map(_probe, items, chunksize=256), f"probing {what}", "utt", len(items)))
    else:
        results = [_probe(item) for item in progress(items, f"probing {what}", "utt")]
    utt2dur: dict[str, float] = {}
    resampled = 0
    for key, info in results:
        if isinstance(info, str):
            problems.append(info)
            continue
        if info.sample_rate != SAMPLE_RATE:
            if cfg.on_rate_mismatch == "error":
                problems.append(f"utterance {key!r} ({wav_scp[key]}): sample rate is {info.sample_rate} Hz, "
                                f"not {SAMPLE_RATE} Hz (on_rate_mismatch: error); resample the corpus or set "
                                f"on_rate_mismatch: resample")
                continue
            resampled += 1
        if info.duration < cfg.min_duration:
            problems.append(f"utterance {key!r} ({wav_scp[key]}): {info.duration:.3f} s is shorter than "
                            f"min_duration {cfg.min_duration} s")
            continue
        utt2dur[key] = info.duration
    if resampled:
        log.warning("%s: %d file(s) are not at %d Hz; they are resampled with soxr when read",
                    what, resampled, SAMPLE_RATE)
    if problems and cfg.on_bad_audio == "error":
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise AudioError(f"{problems[0]}{more}. Fix the file(s), or set on_bad_audio: skip in the stage-1 config "
                         f"to leave them out")
    return utt2dur, problems


def _write_bad_list(directory: Path, problems: list[str]) -> None:
    if problems:
        atomic_write_text(directory / "bad_audio.txt", "".join(p + "\n" for p in problems))
        log.warning("%s: left out %d bad file(s), listed in bad_audio.txt", directory.name, len(problems))


def _write_shard_job(job: tuple[str, list[Utterance]]) -> str:
    path, utterances = job
    write_shard(path, utterances)
    return path


_TAR_BLOCK = 512
_TAR_RECORD = 20 * _TAR_BLOCK                      # tarfile pads an archive to whole records


def _tar_bytes(member_sizes: Iterable[int]) -> int:
    """Size of a USTAR archive of members of these sizes: a header block and whole data blocks each, two zero
    blocks at the end, padded to a whole record."""
    blocks = sum(1 + -(-size // _TAR_BLOCK) for size in member_sizes) + 2
    return -(-blocks * _TAR_BLOCK // _TAR_RECORD) * _TAR_RECORD


def shard_bytes(groups: Sequence[Sequence[Utterance]]) -> int:
    """The bytes the tar shards of ``groups`` will take (audio file sizes plus tar framing)."""
    total = 0
    for group in groups:
        sizes = []
        for utt in group:
            try:
                audio = os.stat(utt.wav).st_size
            except OSError as exc:
                raise DataError(f"utterance {utt.key!r}: cannot read {utt.wav} for sharding ({exc})") from None
            sizes += [len(utt.spk.encode("utf-8")), audio]
        total += _tar_bytes(sizes)
    return total


def check_shard_space(staging: Path, final_directory: Path, groups: Sequence[Sequence[Utterance]]) -> None:
    """Say how large the shards will be, and refuse before writing any when the disk cannot hold them."""
    need = shard_bytes(groups)
    free = shutil.disk_usage(staging).free
    log.info("%s: %d tar shards of %d utterances will take %s (%s free on its disk)", final_directory,
             len(groups), sum(map(len, groups)), size_text(need), size_text(free))
    if need > free:
        raise OutputError(f"tar shards for {final_directory} need {size_text(need)} but its disk has "
                          f"{size_text(free)} free; free space, prepare the data on a larger disk, or set "
                          f"shards: false (raw lists only); existing outputs were left as they were")


def size_text(count: int) -> str:
    """``count`` bytes in words: '399.4 kB', '41.2 GB'."""
    unit = next((u for u, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if count >= size), "B")
    return f"{count / {'GB': 1e9, 'MB': 1e6, 'kB': 1e3, 'B': 1}[unit]:.1f} {unit}"


def write_lists(directory: Path, final_directory: Path, data: KaldiDir, cfg: PrepareConfig) -> None:
    """Write raw.list and, when asked (``shards: true``), tar shards + shard.list for a prepared Kaldi dir."""
    utterances = [Utterance(k, data.wav_scp[k], data.utt2spk[k]) for k in data.wav_scp]
    write_raw_list(directory / "raw.list", utterances)
    if not cfg.shards:
        return
    groups = shard_groups(utterances, cfg.shard_size)
    check_shard_space(directory, final_directory, groups)
    jobs = [(str(directory / "shards" / f"shards_{i:06d}.tar"), group) for i, group in enumerate(groups)]
    (directory / "shards").mkdir(parents=True, exist_ok=True)
    if cfg.nj > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(cfg.nj, len(jobs))) as pool:
            list(progress(pool.map(_write_shard_job, jobs), "writing shards", "shard", len(jobs)))
    else:
        for job in progress(jobs, "writing shards", "shard"):
            _write_shard_job(job)
    shard_paths = [str(final_directory / "shards" / Path(path).name) for path, _ in jobs]
    atomic_write_text(directory / "shard.list", "".join(p + "\n" for p in shard_paths))


def convert_trials(path: Path, known: set[str]) -> list[Trial]:
    """Read a trial list (any accepted form) and check that every utterance is in the set."""
    trials = read_trials(path)
    for number, trial in enumerate(trials, 1):
        for utt in (trial.enrol, trial.test):
            if utt not in known:
                raise DataError(f"{path}:{number}: utterance {utt!r} is not in the test set's wav.scp (or was "
                                f"left out as bad audio); check that the trial list belongs to this corpus")
    if all(t.target is None for t in trials):
        raise DataError(f"{path}: trials carry no target/nontarget labels; stage 1 needs labelled trials")
    return trials


def prepare_speaker_set(wav_root: str | Path | Sequence[str | Path], out_dir: str | Path, cfg: PrepareConfig,
                        trials: Iterable[tuple[str, Path]] = (), expect: str | None = None) -> KaldiDir:
    """VoxCeleb-layout tree(s) -> Kaldi dir with utt2dur, raw/shard lists and converted trial lists.

    Several roots are merged into one set; ``expect`` names a published corpus (``KNOWN_SETS``) whose sizes
    are compared with what was found, with a warning on a difference.
    """
    if expect is not None:
        known_size(expect)
    out_dir = Path(out_dir).resolve()
    roots = [wav_root] if isinstance(wav_root, (str, os.PathLike)) else list(wav_root)
    trials = [(name, Path(path)) for name, path in trials]
    with sibling_lock(out_dir, "stage 1 (prepare_data)"):
        wav_scp, utt2spk = scan_speaker_trees(roots)
        utt2dur, problems = probe_audio(wav_scp, cfg, out_dir.name)
        keep = set(utt2dur)
        data = KaldiDir({k: v for k, v in wav_scp.items() if k in keep},
                        {k: v for k, v in utt2spk.items() if k in keep}, utt2dur)
        trial_lists = [(name, convert_trials(path, keep)) for name, path in trials]
        with atomic_directory(out_dir) as staging:
            write_kaldi_dir(staging, data)
            _write_bad_list(staging, problems)
            for name, converted in trial_lists:
                write_trials(staging / "trials" / name, converted)
            write_lists(staging, out_dir, data, cfg)
    log.info("%s: %d utterances, %d speakers, %.1f h%s", out_dir, len(data), len(data.speakers),
             sum(utt2dur.values()) / 3600, f", {len(trial_lists)} trial list(s)" if trial_lists else "")
    if expect is not None:
        check_known_size(expect, data, [(name, path, len(converted))
                                        for (name, path), (_, converted) in zip(trials, trial_lists, strict=True)])
    return data


_INDEX = re.compile(r"(\d+)$")


def musan_split(musan_root: str | Path) -> dict[str, dict[str, tuple[str, str]]]:
    """Split MUSAN by the trailing file index: even -> train, odd -> test.

    Returns ``{"train"|"test": {key: (path, category)}}``; the category is the folder directly under the
    MUSAN root (never a substring test on the full path), the key the relative path without suffix.
    """
    musan_root = Path(musan_root).resolve()
    split: dict[str, dict[str, tuple[str, str]]] = {"train": {}, "test": {}}
    for path in _audio_files(musan_root):
        relative = path.relative_to(musan_root)
        category = relative.parts[0]
        if category not in MUSAN_CATEGORIES:
            raise DataError(f"{path}: MUSAN files must lie under one of {list(MUSAN_CATEGORIES)} in {musan_root}")
        match = _INDEX.search(path.stem)
        if match is None:
            raise DataError(f"{path}: MUSAN file names end in an index (e.g. noise-free-sound-0001.wav); "
                            f"cannot decide its train/test half")
        half = "train" if int(match.group(1)) % 2 == 0 else "test"
        split[half][relative.with_suffix("").as_posix()] = (str(path), category)
    for half, files in split.items():
        missing = [c for c in MUSAN_CATEGORIES if not any(cat == c for _, cat in files.values())]
        if missing:
            raise DataError(f"MUSAN {half} half under {musan_root} has no files of categories {missing}")
    return split


def prepare_noise_dir(files: dict[str, tuple[str, str]], out_dir: Path, cfg: PrepareConfig) -> None:
    """Write a noise bank directory: wav.scp, utt2cat (category per file) and utt2dur."""
    wav_scp = {k: p for k, (p, _) in files.items()}
    with sibling_lock(out_dir, "stage 1 (prepare_data)"):
        utt2dur, problems = probe_audio(wav_scp, dataclasses.replace(cfg, min_duration=0.0), out_dir.name)
        with atomic_directory(out_dir) as staging:
            write_table(staging / "wav.scp", {k: wav_scp[k] for k in utt2dur})
            write_table(staging / "utt2cat", {k: files[k][1] for k in utt2dur})
            write_table(staging / "utt2dur", {k: f"{d:.3f}" for k, d in utt2dur.items()})
            _write_bad_list(staging, problems)
    log.info("%s: %d files", out_dir, len(utt2dur))


def prepare_musan(musan_root: str | Path, out_root: str | Path, cfg: PrepareConfig) -> None:
    """MUSAN -> ``<out_root>/musan_train`` (even indices) and ``<out_root>/musan_test`` (odd)."""
    for half, files in musan_split(musan_root).items():
        prepare_noise_dir(files, Path(out_root).resolve() / f"musan_{half}", cfg)


def prepare_flat_bank(root: str | Path, out_dir: str | Path, category: str, cfg: PrepareConfig) -> None:
    """Any folder of audio (RIRs, Nonspeech100) -> a noise bank directory of one category."""
    root = Path(root).resolve()
    files = {p.relative_to(root).with_suffix("").as_posix(): (str(p), category) for p in _audio_files(root)}
    bad = [k for k in files if any(c.isspace() for c in k)]
    if bad:
        raise DataError(f"{root}: file {bad[0]!r} has whitespace in its name; rename it")
    prepare_noise_dir(files, Path(out_dir).resolve(), cfg)


def parse_trials_option(values: Iterable[str]) -> list[tuple[str, Path]]:
    """``NAME=PATH`` command-line values -> (name, path) pairs."""
    parsed = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path or os.sep in name:
            raise ConfigError(f"--trials {value!r}: expected NAME=PATH, e.g. vox1_O=/data/voxceleb1/veri_test2.txt")
        parsed.append((name, Path(path)))
    return parsed
