"""Stage 2: deterministic noisy copies of a test set, one directory per (category, SNR) condition.

Each utterance of each condition is mixed with noise drawn by a generator seeded from
``stable_seed(seed, condition, utterance)``, so the audio does not depend on ``--nj``, on a
``--job i --num_jobs n`` split, or on reruns. Levels follow :mod:`nawsv.data.augment` (power = mean square,
no floor). A condition directory ``<out_root>/<set>_<category>_<snr>/`` holds:

- ``condition.yaml``: what defines its audio (seed, category, SNR, babble talkers, noise bank); a rerun
  with different values is refused instead of mixing two definitions in one directory;
- ``manifest.tsv``: per utterance the clean path, noise keys, window offsets, noise gain, peak scale and
  the count of samples that would have clipped; written last, so a complete manifest marks a finished
  condition;
- ``utt2spk``, ``spk2utt``, ``utt2dur`` and ``trials/`` copied from the clean set;
- with ``materialize``: ``audio/<utt>.<wav|flac>`` (16-bit PCM) and a ``wav.scp`` pointing at it. Without it
  no ``wav.scp`` is written, so no tool can mistake the clean audio for the noisy set; readers mix on the
  fly from the manifest (:mod:`nawsv.data.sources`), bit-identical to the materialised audio.

Clipping policy: a mixture whose peak exceeds 16-bit full scale (32767/32768) is scaled down as a whole
so that its peak is exactly full scale (speech and noise alike, so the SNR is unchanged); the scale and
the number of samples that would have clipped are recorded in the manifest and summarised in the log.
``clipping: clip`` is the released behaviour (no level control: samples beyond full scale saturate when
written as 16-bit; the count is still recorded).

Released-code switches that define the audio (and are recorded in ``condition.yaml``): ``level_floor``
(1e-4: the released level definition), ``musan_chunks`` (draw over the released 5-s MUSAN pieces) and
``clipping``.

Work is cut into fixed chunks of ``chunk_size`` utterances; the units of work are (condition, chunk) pairs,
numbered condition by condition and dealt round-robin (:mod:`nawsv.utils.jobs`), so even a one-chunk set keeps
up to one job per condition busy. A job mixes its conditions of a chunk together (loading each clean utterance
once) and writes one partial manifest per (condition, chunk) under ``parts/``. When every chunk of a condition
is done (by whichever job finishes last, or by ``merge_only``) the parts are merged into the manifest.
A rerun skips complete conditions and finished chunks; every file is written atomically.

Concurrency: different jobs run side by side (that is what array jobs do), but one job index runs once at a
time (``<out_root>/.<set>.job-<i>-of-<n>.lock``; a second copy stops with an error naming the first), and
each condition is merged under ``<condition>/.merge.lock`` by one job, the others then find it complete.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path, PurePosixPath
from typing import Iterable, Literal, Sequence

import numpy as np
import yaml

from nawsv.data.audio import load_audio, write_audio
from nawsv.data.augment import (ADDITIVE_CATEGORIES, Bank, add_scaled, draw_noise, mix_at_snr, replay_noise,
                                talker_range)
from nawsv.formats.kaldi import KaldiDir, read_kaldi_dir, read_wav_scp, require_utf8_path, write_table
from nawsv.data.noise_chunks import open_noise_bank
from nawsv.protocol import write_stage_record
from nawsv.utils.atomic import atomic_open, atomic_write_bytes, atomic_write_text, sweep_stale_temporaries
from nawsv.utils.errors import AudioError, ConfigError, DataError, ExperimentError
from nawsv.utils.jobs import JobShare, UnfinishedUnits
from nawsv.utils.lock import directory_lock
from nawsv.utils.progress import progress
from nawsv.utils.records import read_record
from nawsv.utils.seeding import rng_for

log = logging.getLogger(__name__)

CATEGORY_BANKS = {"noise": "musan", "music": "musan", "babble": "musan", "nonspeech": "nonspeech"}
MANIFEST_NAME = "manifest.tsv"
CONDITION_NAME = "condition.yaml"
MANIFEST_COLUMNS = ("utt", "clean_path", "category", "snr_db", "noise_keys", "offsets", "gain", "peak_scale",
                    "clipped_samples")
FULL_SCALE = 32767 / 32768
AUDIO_FORMATS = ("wav", "flac")
COPIED_TABLES = ("utt2spk", "spk2utt", "utt2dur")
MERGE_LOCK = ".merge.lock"
CLIPPING = ("rescale", "clip")
# condition.yaml keys added with the released-code switches, and the value a record written before them meant
LEGACY_DEFAULTS = {"level_floor": 0.0, "clipping": "rescale", "musan_chunks": False}


def _default_categories() -> list[str]:
    return ["noise", "music", "babble", "nonspeech"]


def _default_snrs() -> list[float]:
    return [0.0, 5.0, 10.0, 15.0, 20.0]


@dataclasses.dataclass
class NoisySetConfig:
    """Options of stage 2 (``conf/noisy.yaml``); all but ``chunk_size`` define the audio."""

    seed: int = 0                                   # global seed of every (condition, utterance) generator
    categories: list[str] = dataclasses.field(default_factory=_default_categories)  # noise|music|babble|nonspeech
    snrs: list[float] = dataclasses.field(default_factory=_default_snrs)           # dB, one condition each
    babble_talkers: tuple[int, int] = (3, 6)        # distinct MUSAN speech files averaged per babble
    chunk_size: int = 200                           # utterances per unit of work (resume granularity)
    level_floor: float = 0.0                        # added to mean(x^2) in every level; released: 1e-4
    musan_chunks: bool = False                      # MUSAN drawn over the released 5-s / 3-s-hop pieces
    clipping: Literal["rescale", "clip"] = "rescale"   # clip: the released behaviour (saturate at full scale)

    def __post_init__(self) -> None:
        if self.level_floor < 0 or not math.isfinite(self.level_floor):
            raise ValueError(f"level_floor must be a finite value >= 0, got {self.level_floor}")
        if self.clipping not in CLIPPING:
            raise ValueError(f"clipping must be one of {list(CLIPPING)}, got {self.clipping!r}")
        unknown = [c for c in self.categories if c not in CATEGORY_BANKS]
        if unknown:
            raise ValueError(f"unknown noise categor(ies) {unknown}; choose from {list(CATEGORY_BANKS)}")
        if not self.categories or len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories must be a non-empty list without repeats, got {self.categories}")
        if not self.snrs or not all(math.isfinite(s) for s in self.snrs):
            raise ValueError(f"snrs must be a non-empty list of finite dB values, got {self.snrs}")
        if len({f"{s:g}" for s in self.snrs}) != len(self.snrs):
            raise ValueError(f"snrs must not repeat a value, got {self.snrs}")
        low, high = self.babble_talkers
        if not 1 <= low <= high:
            raise ValueError(f"babble_talkers must satisfy 1 <= low <= high, got {list(self.babble_talkers)}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


@dataclasses.dataclass(frozen=True)
class Condition:
    """One (category, SNR) cell; its name seeds the generators and names the output directory."""

    category: str
    snr_db: float

    @property
    def name(self) -> str:
        return f"{self.category}_{self.snr_db:g}"


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    """How one noisy utterance was made; enough to rebuild it bit for bit from the clean audio and the bank."""

    utt: str
    clean_path: str
    category: str
    snr_db: float
    noise_keys: tuple[str, ...]
    offsets: tuple[int, ...]
    gain: float
    peak_scale: float
    clipped_samples: int

    def line(self) -> str:
        fields = (self.utt, self.clean_path, self.category, repr(self.snr_db), ",".join(self.noise_keys),
                  ",".join(str(o) for o in self.offsets), repr(self.gain), repr(self.peak_scale),
                  str(self.clipped_samples))
        return "\t".join(fields)

    @classmethod
    def parse(cls, line: str, where: str) -> "ManifestRow":
        fields = line.split("\t")
        if len(fields) != len(MANIFEST_COLUMNS):
            raise DataError(f"{where}: expected {len(MANIFEST_COLUMNS)} tab-separated fields, got {len(fields)}; "
                            f"the manifest is corrupt: delete the condition directory and rerun stage 2") from None
        utt, clean_path, category, snr, keys, offsets, gain, scale, clipped = fields
        try:
            row = cls(utt, clean_path, category, float(snr), tuple(keys.split(",")),
                      tuple(int(o) for o in offsets.split(",")), float(gain), float(scale), int(clipped))
        except ValueError as exc:
            raise DataError(f"{where}: malformed value ({exc}); delete the condition directory and rerun "
                            f"stage 2") from None
        if len(row.noise_keys) != len(row.offsets):
            raise DataError(f"{where}: {len(row.noise_keys)} noise keys but {len(row.offsets)} offsets")
        return row


def write_manifest(path: Path, rows: Iterable[ManifestRow]) -> None:
    """Header row plus one line per utterance, written atomically."""
    with atomic_open(path) as handle:
        handle.write("\t".join(MANIFEST_COLUMNS) + "\n")
        for row in rows:
            handle.write(row.line() + "\n")


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read a manifest (or partial manifest) written by :func:`write_manifest`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; run stage 2 (make_noisy_sets) for this condition") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text: the manifest is corrupt; delete the condition directory and "
                        f"rerun stage 2") from None
    if not lines or lines[0].split("\t") != list(MANIFEST_COLUMNS):
        raise DataError(f"{path}: first line must be the header {' '.join(MANIFEST_COLUMNS)}; the file is not a "
                        f"stage-2 manifest")
    return [ManifestRow.parse(line, f"{path}:{number}") for number, line in enumerate(lines[1:], 2)]


def peak_scale(mixture: np.ndarray, clipping: str = "rescale") -> tuple[float, int]:
    """The scale that brings the peak down to full scale (1.0 when it fits, or with ``clipping: clip``) and the
    count of samples beyond full scale."""
    magnitude = np.abs(mixture.astype(np.float64))
    clipped = int(np.count_nonzero(magnitude > FULL_SCALE))
    return (FULL_SCALE / float(magnitude.max()) if clipped and clipping == "rescale" else 1.0), clipped


def to_pcm16(mixture: np.ndarray, scale: float) -> np.ndarray:
    """16-bit samples of ``mixture * scale`` (round to nearest); what both the files and on-the-fly return."""
    scaled = np.rint(mixture.astype(np.float64) * scale * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def pcm16_to_float(pcm: np.ndarray) -> np.ndarray:
    """float32 samples exactly as soundfile decodes a 16-bit file."""
    return pcm.astype(np.float32) / np.float32(32768.0)


def synthesize(speech: np.ndarray, utt: str, clean_path: str, condition: Condition, bank: Bank, seed: int,
               talkers: tuple[int, int], level_floor: float = 0.0,
               clipping: str = "rescale") -> tuple[np.ndarray, ManifestRow]:
    """Mix one utterance for one condition; returns the 16-bit samples and the manifest row."""
    rng = rng_for(seed, condition.name, utt)
    count = int(rng.integers(talkers[0], talkers[1] + 1)) if condition.category == "babble" else 1
    try:
        draw = draw_noise(bank, ADDITIVE_CATEGORIES[condition.category], speech.size, rng, count)
        mixture, gain = mix_at_snr(speech, draw.samples, condition.snr_db, level_floor)
    except AudioError as exc:
        raise AudioError(f"utterance {utt!r} ({clean_path}), condition {condition.name}: {exc}") from None
    scale, clipped = peak_scale(mixture, clipping)
    row = ManifestRow(utt, clean_path, condition.category, condition.snr_db, draw.keys, draw.offsets, gain, scale,
                      clipped)
    return to_pcm16(mixture, scale), row


def render(speech: np.ndarray, bank: Bank, row: ManifestRow) -> np.ndarray:
    """Rebuild the 16-bit samples of a manifest row (same arithmetic as :func:`synthesize`)."""
    noise = replay_noise(bank, row.noise_keys, row.offsets, speech.size)
    return to_pcm16(add_scaled(speech, noise, row.gain), row.peak_scale)


def audio_name(utt: str, audio_format: str) -> str:
    """Relative path of an utterance's audio inside ``audio/``: the key, its audio suffix replaced."""
    path = PurePosixPath(utt)
    if path.is_absolute() or any(part in ("", ".", "..") for part in utt.split("/")):
        raise DataError(f"utterance key {utt!r} cannot name a file inside a condition directory (absolute or with "
                        f"'.'/'..' parts); give the test set plain relative keys")
    stem = str(path.with_suffix("")) if path.suffix.lower() in (".wav", ".flac") else utt
    return f"{stem}.{audio_format}"


def read_condition(directory: str | Path) -> dict:
    """The ``condition.yaml`` of a stage-2 directory."""
    path = Path(directory) / CONDITION_NAME
    data = read_record(path, "a stage-2 condition record (it lacks 'noise_bank')",
                       "delete the condition directory and rerun stage 2", lambda d: "noise_bank" in d)
    if data is None:
        raise DataError(f"{path} does not exist; {directory} is not a stage-2 condition directory")
    return data


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything a worker process needs (picklable)."""

    seed: int
    talkers: tuple[int, int]
    bank_dirs: dict[str, str]
    materialize: bool
    audio_format: str
    level_floor: float = 0.0
    musan_chunks: bool = False
    clipping: str = "rescale"


@dataclasses.dataclass(frozen=True)
class _Task:
    """One chunk of utterances and the conditions it still lacks."""

    utts: tuple[tuple[str, str], ...]                     # (key, clean path)
    conditions: tuple[tuple[Condition, Path, Path], ...]  # (condition, its directory, its partial manifest)


class _Worker:
    """Mixes chunks: loads each clean utterance once and writes audio and partial manifests."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.banks = {name: open_noise_bank(path, plan.musan_chunks and name == "musan")
                      for name, path in plan.bank_dirs.items()}

    def run(self, task: _Task) -> None:
        rows: dict[Condition, list[ManifestRow]] = {c: [] for c, _, _ in task.conditions}
        for utt, clean_path in task.utts:
            speech = load_audio(clean_path, utt)
            for condition, directory, _ in task.conditions:
                bank = self.banks[CATEGORY_BANKS[condition.category]]
                pcm, row = synthesize(speech, utt, clean_path, condition, bank, self.plan.seed, self.plan.talkers,
                                      self.plan.level_floor, self.plan.clipping)
                if self.plan.materialize:
                    write_audio(_audio_path(directory, utt, self.plan.audio_format), pcm)
                rows[condition].append(row)
        for condition, _, part in task.conditions:
            write_manifest(part, rows[condition])


_WORKER: _Worker | None = None


def _init_worker(plan: _Plan) -> None:
    global _WORKER
    _WORKER = _Worker(plan)


def _run_task(task: _Task) -> None:
    assert _WORKER is not None
    _WORKER.run(task)


def _audio_path(condition_dir: Path, utt: str, audio_format: str) -> Path:
    return condition_dir / "audio" / audio_name(utt, audio_format)


def _part_path(condition_dir: Path, chunk: int, chunks: int, chunk_size: int) -> Path:
    return condition_dir / "parts" / f"{chunk:06d}-of-{chunks:06d}.c{chunk_size}.tsv"


def _rows_match(rows: Sequence[ManifestRow], utts: Sequence[tuple[str, str]]) -> bool:
    return [(r.utt, r.clean_path) for r in rows] == list(utts)


def _read_if_valid(path: Path, utts: Sequence[tuple[str, str]]) -> list[ManifestRow] | None:
    """Rows of a (partial) manifest that covers exactly ``utts``; None when absent, stale or corrupt."""
    if not path.is_file():
        return None
    try:
        rows = read_manifest(path)
    except DataError:
        return None
    return rows if _rows_match(rows, utts) else None


class _ConditionSet:
    """The output directories of one test set and the bookkeeping of which parts are done."""

    def __init__(self, clean_dir: Path, clean: KaldiDir, out_root: Path, set_name: str, cfg: NoisySetConfig,
                 banks: dict[str, Bank], talkers: tuple[int, int], materialize: bool, audio_format: str) -> None:
        self.clean_dir, self.clean, self.cfg = clean_dir, clean, cfg
        self.materialize, self.audio_format = materialize, audio_format
        self.banks, self.talkers = banks, talkers
        self.utts = [(u, clean.wav_scp[u]) for u in sorted(clean.wav_scp)]
        size = cfg.chunk_size
        self.chunks = [self.utts[i:i + size] for i in range(0, len(self.utts), size)]
        self.conditions = [Condition(c, float(s)) for c in cfg.categories for s in cfg.snrs]
        self.dirs = {c: out_root / f"{set_name}_{c.name}" for c in self.conditions}
        self.metadata = {c: self._metadata(c, banks, talkers) for c in self.conditions}

    def _metadata(self, condition: Condition, banks: dict[str, Bank], talkers: tuple[int, int]) -> dict:
        data = {"seed": self.cfg.seed, "category": condition.category, "snr_db": condition.snr_db}
        if condition.category == "babble":
            data["babble_talkers"] = list(talkers)
        data["noise_bank"] = str(banks[CATEGORY_BANKS[condition.category]].root)
        data["level_floor"] = self.cfg.level_floor
        data["clipping"] = self.cfg.clipping
        if CATEGORY_BANKS[condition.category] == "musan":
            data["musan_chunks"] = self.cfg.musan_chunks
        return data

    def claim(self, condition: Condition) -> None:
        """Record what defines this condition; refuse a directory made with a different definition."""
        directory = self.dirs[condition]
        path = directory / CONDITION_NAME
        if path.exists():
            new = self.metadata[condition]
            old = {**{k: v for k, v in LEGACY_DEFAULTS.items() if k in new}, **read_condition(directory)}
            if old != new:
                changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in self.metadata[condition].items()
                           if old.get(k) != v]
                raise ExperimentError(f"{directory} was made with a different definition ({'; '.join(changed)}); "
                                      f"delete it or choose another --out_root to keep both")
        else:
            atomic_write_text(path, yaml.safe_dump(self.metadata[condition], sort_keys=False))
        write_stage_record(directory, "noisy", self.cfg)

    def unit(self, condition: Condition, chunk: int) -> int:
        """The number of (condition, chunk) in the round-robin deal: condition by condition, then chunk."""
        return self.conditions.index(condition) * len(self.chunks) + chunk

    def part(self, condition: Condition, chunk: int) -> Path:
        return _part_path(self.dirs[condition], chunk, len(self.chunks), self.cfg.chunk_size)

    def part_done(self, condition: Condition, chunk: int) -> bool:
        if _read_if_valid(self.part(condition, chunk), self.chunks[chunk]) is None:
            return False
        return not self.materialize or all(
            _audio_path(self.dirs[condition], u, self.audio_format).is_file() for u, _ in self.chunks[chunk])

    def complete(self, condition: Condition) -> bool:
        """A manifest that covers the clean set (and, when materialising, a wav.scp in the asked format)."""
        directory = self.dirs[condition]
        if _read_if_valid(directory / MANIFEST_NAME, self.utts) is None:
            return False
        if not self.materialize:
            return True
        return self._wav_scp_complete(directory, self.audio_format)

    def _wav_scp_complete(self, directory: Path, audio_format: str | None) -> bool:
        """wav.scp lists exactly the clean set's utterances, all existing files (of ``audio_format`` if given)."""
        if not (directory / "wav.scp").is_file():
            return False
        wav_scp = read_wav_scp(directory / "wav.scp")
        suffix = f".{audio_format}" if audio_format else ""
        return list(wav_scp) == [u for u, _ in self.utts] and all(
            p.endswith(suffix) and Path(p).is_file() for p in wav_scp.values())

    def merge(self, condition: Condition) -> None:
        """Concatenate the parts into the manifest (written last) and copy the clean set's tables."""
        directory = self.dirs[condition]
        rows: list[ManifestRow] = []
        for chunk, utts in enumerate(self.chunks):
            part = _read_if_valid(self.part(condition, chunk), utts)
            if part is None:
                raise DataError(f"{directory}: partial manifest {self.part(condition, chunk).name} is missing or "
                                f"stale; run the job that owns chunk {chunk} before merging")
            rows += part
        for name in COPIED_TABLES:
            if (self.clean_dir / name).is_file():
                atomic_write_bytes(directory / name, (self.clean_dir / name).read_bytes())
        if not (self.clean_dir / "spk2utt").is_file():
            write_table(directory / "spk2utt", {s: " ".join(u) for s, u in self.clean.spk2utt.items()})
        trials = self.clean_dir / "trials"
        if trials.is_dir():
            for path in sorted(p for p in trials.iterdir() if p.is_file()):
                atomic_write_bytes(directory / "trials" / path.name, path.read_bytes())
        if self.materialize:
            write_table(directory / "wav.scp",
                        {u: str(_audio_path(directory, u, self.audio_format)) for u, _ in self.utts})
        elif (directory / "wav.scp").is_file() and not self._wav_scp_complete(directory, None):
            log.warning("%s: removing wav.scp of an earlier materialised run: it does not cover the current clean "
                        "set (readers now mix on the fly from the manifest)", directory.name)
            (directory / "wav.scp").unlink()
        write_manifest(directory / MANIFEST_NAME, rows)
        shutil.rmtree(directory / "parts", ignore_errors=True)
        rescaled = [r for r in rows if r.clipped_samples]
        if rescaled and self.cfg.clipping == "clip":
            log.warning("%s: %d of %d utterances clip (%d samples saturate at full scale: clipping: clip, the "
                        "released behaviour; recorded in manifest.tsv)", directory.name, len(rescaled), len(rows),
                        sum(r.clipped_samples for r in rescaled))
        elif rescaled:
            log.warning("%s: %d of %d utterances would clip (%d samples); peak-normalised to full scale, scale "
                        "down to %.3f (recorded in manifest.tsv)", directory.name, len(rescaled), len(rows),
                        sum(r.clipped_samples for r in rescaled), min(r.peak_scale for r in rescaled))


def _bank_dirs(cfg: NoisySetConfig, musan: str | Path | None, nonspeech: str | Path | None) -> dict[str, Path]:
    given = {"musan": musan, "nonspeech": nonspeech}
    options = {"musan": "--musan (the MUSAN test half, e.g. data/musan_test)",
               "nonspeech": "--nonspeech (e.g. data/nonspeech)"}
    needed = sorted({CATEGORY_BANKS[c] for c in cfg.categories})
    missing = [name for name in needed if given[name] is None]
    if missing:
        users = [c for c in cfg.categories if CATEGORY_BANKS[c] in missing]
        raise ConfigError(f"categories {users} need {' and '.join(options[m] for m in missing)}; pass the bank or "
                          f"remove the categories from the config")
    return {name: Path(given[name]) for name in needed}


def _check_keys(utts: Sequence[tuple[str, str]], clean_dir: Path, audio_format: str) -> None:
    names: dict[str, str] = {}
    for utt, path in utts:
        if "\t" in path:
            raise DataError(f"{clean_dir}/wav.scp: path of {utt!r} contains a tab, which a manifest cannot hold")
        name = audio_name(utt, audio_format)
        if name in names:
            raise DataError(f"{clean_dir}: utterances {names[name]!r} and {utt!r} would share the audio file "
                            f"{name}; rename one of them")
        names[name] = utt


def make_noisy_sets(data_dir: str | Path, out_root: str | Path, cfg: NoisySetConfig, *,
                    musan: str | Path | None = None, nonspeech: str | Path | None = None,
                    set_name: str | None = None, materialize: bool = True,
                    audio_format: Literal["wav", "flac"] = "wav", nj: int = 1, job: int = 0, num_jobs: int = 1,
                    merge_only: bool = False, array_first: int = 0) -> list[Path]:
    """Create (or complete) every condition of one test set; returns the condition directories."""
    if audio_format not in AUDIO_FORMATS:
        raise ConfigError(f"audio format {audio_format!r} is not one of {list(AUDIO_FORMATS)}")
    share = JobShare(job, num_jobs, array_first)
    clean_dir = Path(data_dir).resolve()
    out_root = Path(out_root).resolve()
    set_name = set_name or clean_dir.name
    if materialize:
        require_utf8_path(out_root / set_name, "--out_root", "wav.scp would have to name the noisy audio files there")
    clean = read_kaldi_dir(clean_dir)
    banks = {name: open_noise_bank(path, cfg.musan_chunks and name == "musan")
             for name, path in _bank_dirs(cfg, musan, nonspeech).items()}
    for category in cfg.categories:
        bank = banks[CATEGORY_BANKS[category]]
        commas = [k for k in bank.keys(ADDITIVE_CATEGORIES[category]) if "," in k]
        if commas:
            raise DataError(f"noise bank {bank.root}: key {commas[0]!r} contains a comma, which the manifest uses "
                            f"to join noise keys; rename the file and rerun stage 1")
    talkers = talker_range(banks["musan"], cfg.babble_talkers) if "babble" in cfg.categories else cfg.babble_talkers
    sets = _ConditionSet(clean_dir, clean, out_root, set_name, cfg, banks, talkers, materialize, audio_format)
    _check_keys(sets.utts, clean_dir, audio_format)
    with contextlib.ExitStack() as stack:
        if not merge_only:                   # a merge-only run writes under the merge locks alone
            stack.enter_context(directory_lock(out_root, f"stage 2 job {job} of {num_jobs} for {set_name}",
                                               name=f".{set_name}.job-{job}-of-{num_jobs}.lock"))
        _fill_conditions(sets, share, nj, merge_only)
    return [sets.dirs[c] for c in sets.conditions]


def _fill_conditions(sets: _ConditionSet, share: JobShare, nj: int, merge_only: bool) -> None:
    """Claim the condition dirs, mix this job's chunks, and merge every condition whose chunks are all done."""
    for condition in sets.conditions:
        sets.claim(condition)
        sweep_stale_temporaries(sets.dirs[condition])     # of runs killed by SIGKILL (SIGTERM removes its own)
    pending = [c for c in sets.conditions if not sets.complete(c)]
    log.info("%s: %d condition(s), %d already complete, %d utterances in %d chunk(s); job %d of %d",
             sets.clean_dir.name, len(sets.conditions), len(sets.conditions) - len(pending), len(sets.utts),
             len(sets.chunks), share.job, share.num_jobs)
    if not merge_only:
        tasks = []
        for chunk in range(len(sets.chunks)):
            todo = tuple((c, sets.dirs[c], sets.part(c, chunk)) for c in pending
                         if share.owns(sets.unit(c, chunk)) and not sets.part_done(c, chunk))
            if todo:
                tasks.append(_Task(tuple(sets.chunks[chunk]), todo))
        plan = _Plan(sets.cfg.seed, sets.talkers, {n: str(b.root) for n, b in sets.banks.items()}, sets.materialize,
                     sets.audio_format, sets.cfg.level_floor, sets.cfg.musan_chunks, sets.cfg.clipping)
        _run_tasks(tasks, plan, nj)
    unfinished: dict[str, tuple[int, list[int]]] = {}     # a merge goes through every condition, then names all
    for condition in pending:
        with directory_lock(sets.dirs[condition], "stage 2 merge", name=MERGE_LOCK, wait=True):
            if sets.complete(condition):
                continue                        # another job merged it while this one worked or waited
            waiting = [i for i in range(len(sets.chunks)) if not sets.part_done(condition, i)]
            if not waiting:
                sets.merge(condition)
            elif merge_only:
                unfinished[str(sets.dirs[condition])] = (sets.unit(condition, 0), waiting)
            else:
                log.info("%s: %d chunk(s) left to other jobs; the last job to finish merges",
                         sets.dirs[condition].name, len(waiting))
    if unfinished:
        raise UnfinishedUnits(share, unfinished)


def _run_tasks(tasks: list[_Task], plan: _Plan, nj: int) -> None:
    """Run the chunks in this process (nj 1) or in ``nj`` worker processes; the audio is the same."""
    if nj == 1 or len(tasks) <= 1:
        worker = _Worker(plan)
        for task in progress(tasks, "noisy sets", "chunk"):
            worker.run(task)
        return
    with ProcessPoolExecutor(min(nj, len(tasks)), initializer=_init_worker, initargs=(plan,)) as pool:
        futures = [pool.submit(_run_task, task) for task in tasks]
        try:
            for future in progress(as_completed(futures), "noisy sets", "chunk", len(futures)):
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)     # finished chunks stay on disk for the rerun
            raise
