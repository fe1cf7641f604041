"""nawsv's stage-4 augmentation inside WeSpeaker's own Dataset, on the LMDB banks WeSpeaker's tools build.

WeSpeaker's ``Dataset`` adds reverberation and noise with ``processor.add_reverb_noise`` (looked up when the
Dataset is built) on two LMDB banks (``reverb_data`` / ``noise_data``, written by its ``tools/make_lmdb.py``).
Its own processor differs from nawsv's stage 4 (reverb or one noise file at fixed SNR ranges, the 1e-4 level
floor, no babble or babble+music, output peak-normalised). When a config's ``dataset_args`` holds
``nawsv_augment_args`` (the keys of :class:`~nawsv.data.augment.AugmentConfig` except ``prob``, which is
WeSpeaker's ``aug_prob``), :func:`install` makes the Dataset call :class:`ReverbNoise` instead: nawsv's
:class:`~nawsv.data.augment.Augmenter` (noise, music, babble, babble+music, RIR with the protocol's
``rir_mode``, ``level_floor`` and ``musan_chunks``) reading the same LMDB banks through :class:`LmdbNoiseBank`.
Every other config goes through WeSpeaker's processor unchanged. With ``aug_prob`` > 0 a bank that is unset or
missing is an error, for every config: WeSpeaker itself would skip augmentation without a word.

Banks: :func:`build_lmdb` runs WeSpeaker's ``tools/make_lmdb.py`` unmodified on a stage-1 bank (``wav.scp`` +
``utt2cat``) into ``<bank>/lmdb``; MUSAN keys start with their category (``noise/...``, ``music/...``,
``speech/...``), which is WeSpeaker's own convention and how the categories are read back.

Random stream: each crop gets a ``numpy`` Generator seeded from Python's ``random``, the stream WeSpeaker
seeds (``set_seed``) and DataLoader re-seeds per worker; given the same crop and Generator, the result is
bit-identical to nawsv's stage-4 augmentation on the stage-1 bank (tests/wespeaker/test_augment.py).

    python -m nawsv.integrations.wespeaker.augment --musan data/musan_train --rirs data/rirs
prints ``--noise_data <musan>/lmdb --reverb_data <rirs>/lmdb`` (one word a line) for WeSpeaker's trainer (rerun: a no-op).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import logging
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import soundfile as sf

from nawsv.data.audio import SAMPLE_RATE, BufferReader, load_audio_bytes
from nawsv.data.augment import AugmentConfig, Augmenter
from nawsv.data.noise_bank import NoiseBank
from nawsv.utils.atomic import atomic_directory
from nawsv.utils.config import config_from_dict
from nawsv.utils.errors import ConfigError, DataError
from nawsv.utils.lock import directory_lock

log = logging.getLogger(__name__)

ARGS_KEY = "nawsv_augment_args"         # dataset_args.<this>: AugmentConfig without prob
LMDB_NAME = "lmdb"                      # <bank>/lmdb, as WeSpeaker's recipe (data/musan/lmdb)
SOURCE_LIST = "source.scp"              # the make_lmdb.py input, kept in the LMDB dir: the rerun check
SOURCE_STAT = "source.stat"             # size and mtime of every source file, also part of the check
WESPEAKER_AUG_PROB = 0.6                # WeSpeaker's Dataset default for a missing aug_prob
BUILD_COMMAND = "python -m nawsv.integrations.wespeaker.augment --musan data/musan_train --rirs data/rirs"


class LmdbNoiseBank(NoiseBank):
    """A :class:`NoiseBank` over one of WeSpeaker's ``LmdbData``: same keys, order, windows and samples.

    The category of a key is its first path component (``noise/free-sound/...``); audio is decoded from the
    stored file bytes exactly as :func:`~nawsv.data.audio.load_audio` decodes the file (only the window).
    """

    def __init__(self, source: Any) -> None:
        root = Path(source.db.path())
        keys = list(source.keys)
        super().__init__(root, {key: f"{root}[{key}]" for key in keys}, {key: key.split("/")[0] for key in keys})
        self._source = source                  # LmdbData closes its environment when it is collected

    @contextlib.contextmanager
    def _stored(self, key: str) -> Iterator[memoryview]:
        """The stored file bytes in place (valid inside the block: a read transaction on the mapped file)."""
        with self._source.db.begin(write=False, buffers=True) as txn:
            data = txn.get(key.encode())
            if data is None:
                raise DataError(f"LMDB bank {self.root} lists {key!r} but holds no data for it; rebuild it with "
                                f"{BUILD_COMMAND}")
            yield data

    def num_samples(self, key: str) -> int:
        frames = self._frames.get(key)
        if frames is None:
            with self._stored(key) as data:
                info = sf.info(BufferReader(data))
            frames = info.frames if info.samplerate == SAMPLE_RATE else len(self.load(key))
            self._frames[key] = frames
        return frames

    def load(self, key: str, start: int = 0, num_samples: int | None = None) -> np.ndarray:
        with self._stored(key) as data:
            return load_audio_bytes(data, key, str(self.root), start=start, num_samples=num_samples)


def crop_generator() -> np.random.Generator:
    """The Generator of one crop, seeded from WeSpeaker's (per-worker seeded) ``random`` stream."""
    return np.random.default_rng(random.getrandbits(64))


@dataclasses.dataclass(frozen=True)
class ReverbNoise:
    """Stands in for ``wespeaker.dataset.processor.add_reverb_noise`` (same call): nawsv's augmentation.

    ``aug_prob`` is the Dataset's ``dataset_args.aug_prob``, already ``cfg.prob``."""

    cfg: AugmentConfig

    def __call__(self, data: Iterator[dict], reverb_source: Any, noise_source: Any,
                 resample_rate: int = SAMPLE_RATE, aug_prob: float = WESPEAKER_AUG_PROB) -> Iterator[dict]:
        import torch

        augmenter = make_augmenter(self.cfg, reverb_source, noise_source, resample_rate)
        for sample in data:
            augmented = augmenter(sample["wav"][0].numpy(), crop_generator())
            sample["wav"] = torch.from_numpy(augmented).unsqueeze(0)
            yield sample


def make_augmenter(cfg: AugmentConfig, reverb_source: Any, noise_source: Any,
                   resample_rate: int = SAMPLE_RATE) -> Augmenter:
    """nawsv's Augmenter on two of WeSpeaker's ``LmdbData`` (RIRs, MUSAN)."""
    if resample_rate != SAMPLE_RATE:
        raise ConfigError(f"dataset_args.resample_rate is {resample_rate}: nawsv's augmentation ({ARGS_KEY}) "
                          f"works at {SAMPLE_RATE} Hz; set resample_rate: {SAMPLE_RATE}")
    return Augmenter(cfg, LmdbNoiseBank(noise_source), LmdbNoiseBank(reverb_source))


def augment_config(dataset_args: dict[str, Any]) -> AugmentConfig | None:
    """nawsv's augmentation of a WeSpeaker ``dataset_args``: None without ``nawsv_augment_args`` or at
    ``aug_prob`` 0 (then WeSpeaker adds nothing either)."""
    args = dataset_args.get(ARGS_KEY)
    prob = float(dataset_args.get("aug_prob", WESPEAKER_AUG_PROB))
    if args is None or prob <= 0.0:
        return None
    if not isinstance(args, dict):
        raise ConfigError(f"dataset_args.{ARGS_KEY} must be a mapping of augmentation settings, got {args!r}")
    if "prob" in args:
        raise ConfigError(f"dataset_args.{ARGS_KEY}.prob: the probability is WeSpeaker's dataset_args.aug_prob; "
                          f"remove prob")
    valid = sorted(field.name for field in dataclasses.fields(AugmentConfig) if field.name != "prob")
    unknown = sorted(set(args) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in dataset_args.{ARGS_KEY}; valid keys: "
                          f"{', '.join(valid)}")
    return config_from_dict(AugmentConfig, {**args, "prob": prob}, f"dataset_args.{ARGS_KEY}")


def check_banks(prob: float, reverb_data: str | None, noise_data: str | None) -> None:
    """Augmentation that would silently not happen is an error: with ``aug_prob`` > 0 both banks must exist
    (WeSpeaker's Dataset skips augmentation when one is unset)."""
    if prob <= 0.0:
        return
    for name, path in (("reverb_data", reverb_data), ("noise_data", noise_data)):
        if not path:
            raise ConfigError(f"dataset_args.aug_prob is {prob} but {name} is not set, so WeSpeaker would train "
                              f"without augmentation; build the LMDB banks ({BUILD_COMMAND}) and pass --{name}, "
                              f"or set aug_prob: 0")
        if not (Path(path) / "data.mdb").is_file():
            raise ConfigError(f"{name}: {path} is not an LMDB bank (no data.mdb); build it with {BUILD_COMMAND}")


def install() -> None:
    """Make WeSpeaker's ``Dataset`` use :class:`ReverbNoise` for configs with ``nawsv_augment_args``. Idempotent.

    The Dataset looks ``processor.add_reverb_noise`` up while it is built; the wrapper swaps in nawsv's
    processor for that one call (bound to that config's settings), so no global state reaches the workers.
    """
    import wespeaker.dataset.dataset as ws_dataset

    original = ws_dataset.Dataset
    if getattr(original, "nawsv_wrapped", False):
        return
    wrapped = _with_nawsv_augmentation(original, ws_dataset.processor)
    for loaded in list(sys.modules.values()):              # train.py / extract.py bind Dataset on import
        if getattr(loaded, "__name__", "").startswith("wespeaker") and getattr(loaded, "Dataset", None) is original:
            setattr(loaded, "Dataset", wrapped)


def _with_nawsv_augmentation(original: Callable, processor: Any) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def dataset(*args: Any, **kwargs: Any) -> Any:
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        dataset_args, reverb, noise = (call.arguments[k] for k in ("configs", "reverb_lmdb_file", "noise_lmdb_file"))
        if call.arguments["data_type"] == "feat":                 # WeSpeaker augments waveforms only
            return original(*args, **kwargs)
        check_banks(float(dataset_args.get("aug_prob", WESPEAKER_AUG_PROB)), reverb, noise)
        cfg = augment_config(dataset_args)
        if cfg is None:
            return original(*args, **kwargs)
        _check_settings(cfg, reverb, noise, dataset_args.get("resample_rate", SAMPLE_RATE))
        with _replaced(processor, "add_reverb_noise", ReverbNoise(cfg)):
            return original(*args, **kwargs)

    dataset.nawsv_wrapped = True
    return dataset


def _check_settings(cfg: AugmentConfig, reverb_data: str, noise_data: str, resample_rate: int) -> None:
    """The settings fit the banks (categories, babble talkers, sample rate): one-line errors before training,
    not in a DataLoader worker. The banks are closed again: LMDB opens an environment once per process."""
    from wespeaker.dataset.lmdb_data import LmdbData

    sources = [LmdbData(reverb_data), LmdbData(noise_data)]
    try:
        make_augmenter(cfg, *sources, resample_rate)
    finally:
        for source in sources:
            source.db.close()


@contextlib.contextmanager
def _replaced(module: Any, attr: str, value: Any) -> Iterator[None]:
    saved = getattr(module, attr)
    setattr(module, attr, value)
    try:
        yield
    finally:
        setattr(module, attr, saved)


def make_lmdb_script() -> Path:
    """WeSpeaker's ``tools/make_lmdb.py`` beside the imported ``wespeaker`` package."""
    import wespeaker

    script = Path(wespeaker.__file__).resolve().parents[1] / "tools" / "make_lmdb.py"
    if not script.is_file():
        raise ConfigError(f"WeSpeaker's tools/make_lmdb.py is not at {script}; WeSpeaker must be a source checkout "
                          f"on PYTHONPATH (bash tools/install.sh --wespeaker)")
    return script


def _source_lists(bank: NoiseBank) -> tuple[str, str]:
    """The make_lmdb.py input (``key path`` lines) and the size/mtime of every file, for the rerun check."""
    lines, stats = [], []
    for key in bank.keys():
        path = bank.path(key)
        if len(f"{key} {path}".split()) != 2 or path.endswith("|"):
            raise DataError(f"noise bank {bank.root}: {key!r} -> {path!r}: WeSpeaker's make_lmdb.py needs a plain "
                            f"file path without whitespace; rename the file and rerun stage 1")
        lines.append(f"{key} {path}\n")
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise DataError(f"noise bank {bank.root}: {key!r} -> {path}: {exc.strerror}; rerun stage 1 for this "
                            f"bank") from None
        stats.append(f"{key} {stat.st_size} {stat.st_mtime_ns}\n")
    return "".join(lines), "".join(stats)


def _check_category_keys(bank: NoiseBank) -> None:
    """A bank of several categories (MUSAN) must name each in its keys, where the LMDB keeps it."""
    if len(bank.categories) < 2:
        return
    for category in bank.categories:
        wrong = [key for key in bank.keys(category) if key.split("/")[0] != category]
        if wrong:
            raise DataError(f"noise bank {bank.root}: key {wrong[0]!r} has category {category!r} in utt2cat but "
                            f"does not start with '{category}/'; the LMDB bank keeps categories only in the keys "
                            f"(MUSAN keys from stage 1 do): rerun stage 1")


def build_lmdb(bank_dir: str | Path) -> Path:
    """``<bank_dir>/lmdb`` from a stage-1 bank with WeSpeaker's ``tools/make_lmdb.py``; atomic, a no-op when the
    bank's files are unchanged since the last build, and one build at a time (nodes of a multi-node job wait)."""
    bank = NoiseBank.from_dir(bank_dir)
    _check_category_keys(bank)
    source, stats = _source_lists(bank)
    target = bank.root / LMDB_NAME
    with directory_lock(bank.root, "building the WeSpeaker LMDB bank", name=f".{LMDB_NAME}.lock", wait=True):
        if all((target / name).is_file() for name in ("data.mdb", SOURCE_LIST, SOURCE_STAT)) \
                and (target / SOURCE_LIST).read_text() == source and (target / SOURCE_STAT).read_text() == stats:
            log.info("%s is up to date", target)
            return target
        with atomic_directory(target) as staging:
            (staging / SOURCE_LIST).write_text(source)
            (staging / SOURCE_STAT).write_text(stats)
            proc = subprocess.run([sys.executable, str(make_lmdb_script()), str(staging / SOURCE_LIST),
                                   str(staging)], capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise DataError(f"WeSpeaker's make_lmdb.py failed on {bank.root}/wav.scp: {tail}")
    log.info("%s: %d files", target, len(bank.keys()))
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build WeSpeaker's LMDB noise/RIR banks from stage-1 banks and "
                                                 "print the trainer options that name them.")
    parser.add_argument("--musan", type=Path, required=True, help="stage-1 MUSAN train half (data/musan_train)")
    parser.add_argument("--rirs", type=Path, required=True, help="stage-1 RIR bank (data/rirs)")
    args = parser.parse_args(argv)
    noise, reverb = build_lmdb(args.musan), build_lmdb(args.rirs)
    for word in ("--noise_data", noise, "--reverb_data", reverb):     # one per line: paths may hold spaces
        print(word)


if __name__ == "__main__":
    from nawsv.utils.errors import NawsvError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        main()
    except NawsvError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
