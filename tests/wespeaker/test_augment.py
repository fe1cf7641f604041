"""nawsv's stage-4 augmentation inside WeSpeaker's unmodified Dataset, on banks built by its own make_lmdb.py.

The pin: for the same utterance and seed, the crop WeSpeaker's Dataset yields with nawsv's augmentation
registered equals, bit for bit, nawsv's own Augmenter applied to the clean crop on the stage-1 (file) banks.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from nawsv.data.augment import AugmentConfig, Augmenter
from nawsv.data.noise_bank import NoiseBank
from nawsv.integrations.wespeaker import augment
from nawsv.train.finetune import FinetuneConfig
from nawsv.utils.config import load_config
from nawsv.utils.errors import ConfigError, DataError
from tests.conftest import ROOT, run_module

CHUNK_FRAMES = 40                              # 40 x 20 ms = 0.8-s crops


@pytest.fixture(scope="module")
def banks(train_data, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of stage 1's MUSAN train half and RIR bank (the session fixture stays read-only), with LMDBs."""
    root = tmp_path_factory.mktemp("ws_banks")
    copies = {name: Path(shutil.copytree(train_data[name], root / name)) for name in ("musan_train", "rirs")}
    augment.install()
    return {**copies, "noise_data": augment.build_lmdb(copies["musan_train"]),
            "reverb_data": augment.build_lmdb(copies["rirs"]), "dev": train_data["dev"]}


def dataset_args(aug_prob: float, **nawsv_args) -> dict:
    return {"shuffle": False, "filter": False, "resample_rate": 16000, "speed_perturb": False,
            "num_frms": CHUNK_FRAMES, "aug_prob": aug_prob, "frontend": "nawsv_ssl",
            "nawsv_ssl_args": {"frame_shift": 20, "frame_length": 20},
            **({"nawsv_augment_args": nawsv_args} if nawsv_args else {})}


def wespeaker_crops(banks: dict, list_file: Path, args: dict, count: int = 1, after_each=lambda: None,
                    **lmdbs) -> list[np.ndarray]:
    """Crops of WeSpeaker's own Dataset (looked up in its module, as train.py does); the pipeline is lazy, so
    ``after_each`` runs after one crop is cut and before the next."""
    import wespeaker.dataset.dataset as ws_dataset

    dataset = ws_dataset.Dataset("raw", str(list_file), args, {}, repeat_dataset=True,
                                 **{"reverb_lmdb_file": str(banks["reverb_data"]),
                                    "noise_lmdb_file": str(banks["noise_data"]), **lmdbs})
    crops = []
    for sample in itertools.islice(dataset, count):
        assert sample["wav"].dtype.is_floating_point and sample["wav"].shape[0] == 1
        crops.append(sample["wav"][0].numpy())
        after_each()
    return crops


def first_crop(banks: dict, list_file: Path, args: dict, **lmdbs) -> np.ndarray:
    return wespeaker_crops(banks, list_file, args, **lmdbs)[0]


def test_lmdb_banks_hold_the_stage1_files_and_rebuild_only_on_change(banks):
    from wespeaker.dataset.lmdb_data import LmdbData

    for name in ("musan_train", "rirs"):
        bank, lmdb = NoiseBank.from_dir(banks[name]), banks["reverb_data" if name == "rirs" else "noise_data"]
        source = LmdbData(str(lmdb))                                  # WeSpeaker's own reader
        assert source.keys == list(bank.keys())
        with source.db.begin() as txn:
            for key in bank.keys():
                assert txn.get(key.encode()) == Path(bank.path(key)).read_bytes()
        ours = augment.LmdbNoiseBank(source)
        assert ours.keys() == bank.keys()
        if name == "musan_train":                                     # categories read back from the keys
            assert ours.categories == bank.categories == ("music", "noise", "speech")
            assert all(ours.keys(c) == bank.keys(c) for c in bank.categories)
        for key in bank.keys():
            frames = ours.num_samples(key)
            assert frames == bank.num_samples(key) > 700
            for length, offset in ((700, 0), (700, 1), (700, frames - 700), (frames + 5, 0)):   # last: wrapped
                assert np.array_equal(ours.read_at(key, length, offset), bank.read_at(key, length, offset))
    data_file = banks["noise_data"] / "data.mdb"
    before = data_file.stat().st_mtime_ns
    assert augment.build_lmdb(banks["musan_train"]) == banks["noise_data"]
    assert data_file.stat().st_mtime_ns == before                    # unchanged bank: a no-op


def stored(lmdb: Path, key: str) -> bytes | None:
    from wespeaker.dataset.lmdb_data import LmdbData

    source = LmdbData(str(lmdb))
    with source.db.begin() as txn:
        return txn.get(key.encode())


def test_changed_files_rebuild_and_a_failed_rebuild_keeps_the_old_bank(banks, tmp_path):
    bank = Path(shutil.copytree(banks["rirs"], tmp_path / "rirs"))
    originals = NoiseBank.from_dir(bank)
    copies = {key: Path(shutil.copy(originals.path(key), tmp_path / f"{i}.wav"))
              for i, key in enumerate(originals.keys())}
    (bank / "wav.scp").write_text("".join(f"{key} {path}\n" for key, path in copies.items()))
    lmdb = augment.build_lmdb(bank)
    key, path = next(iter(copies.items()))
    path.write_bytes(path.read_bytes() + b"\0\0")                     # a source file changed: rebuilt
    augment.build_lmdb(bank)
    content = path.read_bytes()
    assert stored(lmdb, key) == content
    path.unlink()
    with pytest.raises(DataError, match=f"{path}: No such file"):
        augment.build_lmdb(bank)
    assert stored(lmdb, key) == content                              # the last good bank is still there


def test_concurrent_builds_make_the_bank_once(banks, tmp_path, caplog):
    """Every node of a multi-node job runs the phase-2 script: the second build waits, then finds it done."""
    bank = Path(shutil.copytree(banks["rirs"], tmp_path / "rirs", ignore=shutil.ignore_patterns("lmdb")))
    with caplog.at_level(logging.INFO, logger=augment.__name__):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            built = list(pool.map(augment.build_lmdb, [bank, bank]))
    assert built == [bank / "lmdb"] * 2
    messages = [record.getMessage() for record in caplog.records]
    assert sum("up to date" in m for m in messages) == 1 and sum(m.endswith(" files") for m in messages) == 1


def test_command_line_prints_the_trainer_options(banks):
    proc = run_module("nawsv.integrations.wespeaker.augment", "--musan", str(banks["musan_train"]),
                      "--rirs", str(banks["rirs"]), check=True)
    assert proc.stdout.splitlines() == ["--noise_data", str(banks["noise_data"]), "--reverb_data", str(banks["reverb_data"])]


@pytest.mark.parametrize("protocol", [
    {"babble_talkers": [1, 2]},                                                      # nawsv's levels and RIRs
    {"babble_talkers": [1, 2], "level_floor": 1.0e-4, "rir_mode": "truncated", "musan_chunks": True},  # released
])
def test_wespeaker_dataset_crop_equals_stage4_augmentation(banks, protocol):
    """Same utterance, same seed: WeSpeaker's Dataset with nawsv's processor == nawsv's Augmenter, bit for bit."""
    cfg = AugmentConfig(prob=0.8, **protocol)
    stage4 = Augmenter(cfg, NoiseBank.from_dir(banks["musan_train"]), NoiseBank.from_dir(banks["rirs"]))
    list_file, count, kinds = banks["dev"] / "raw.list", 60, []
    for seed in (0, 1):
        generators = []
        random.seed(seed)                  # WeSpeaker's crops without augmentation; the draw after each crop is
        clean = wespeaker_crops(banks, list_file, dataset_args(0.0), count,        # the one its Generator takes
                                lambda: generators.append(augment.crop_generator()))
        random.seed(seed)
        augmented = wespeaker_crops(banks, list_file, dataset_args(cfg.prob, **protocol), count)
        for index, (crop, dry, generator) in enumerate(zip(augmented, clean, generators, strict=True)):
            expected, what = stage4.apply(dry, generator)
            assert crop.size == dry.size == CHUNK_FRAMES * 320
            assert np.array_equal(crop, expected), (seed, index, what)
            kinds.append(what.kind)
    assert set(kinds) == {"clean", "noise", "babble", "music", "babble_music", "rir"}, kinds


def test_missing_banks_are_an_error_not_a_silent_skip(banks, tmp_path):
    list_file = tmp_path / "one.list"
    list_file.write_text((banks["dev"] / "raw.list").read_text().splitlines()[0] + "\n")
    for lmdbs, match in (({"reverb_lmdb_file": None}, "reverb_data is not set"),
                         ({"noise_lmdb_file": str(tmp_path / "none")}, "noise_data: .* is not an LMDB bank")):
        for args in (dataset_args(0.6, babble_talkers=[1, 2]), dataset_args(0.6)):   # nawsv's or WeSpeaker's own
            with pytest.raises(ConfigError, match=match):
                first_crop(banks, list_file, args, **lmdbs)
    assert first_crop(banks, list_file, dataset_args(0.0), reverb_lmdb_file=None).size > 0
    with pytest.raises(ConfigError, match="aug_prob"):
        first_crop(banks, list_file, dataset_args(0.6, prob=0.5))
    with pytest.raises(ConfigError, match="rir_modes in .* valid keys: babble_talkers, level_floor, musan_chunks, "
                                          "rir_mode, snr, types$"):
        first_crop(banks, list_file, dataset_args(0.6, rir_modes="aligned"))
    with pytest.raises(ConfigError, match="resample_rate"):
        first_crop(banks, list_file, {**dataset_args(0.6, babble_talkers=[1, 2]), "resample_rate": 8000})


def test_other_configs_keep_wespeakers_processor_on_the_same_banks(banks, tmp_path):
    import wespeaker.dataset.dataset as ws_dataset
    import wespeaker.dataset.processor as ws_processor

    upstream = ws_processor.add_reverb_noise
    list_file = tmp_path / "one.list"
    list_file.write_text((banks["dev"] / "raw.list").read_text().splitlines()[0] + "\n")
    for args, nawsv in ((dataset_args(0.6), False), (dataset_args(0.6, babble_talkers=[1, 2]), True)):
        dataset = ws_dataset.Dataset("raw", str(list_file), args, {}, reverb_lmdb_file=str(banks["reverb_data"]),
                                     noise_lmdb_file=str(banks["noise_data"]))
        assert isinstance(dataset.f, augment.ReverbNoise) if nawsv else dataset.f is upstream   # last stage
        del dataset                                                    # LMDB opens a bank once per process
    assert ws_processor.add_reverb_noise is upstream                  # swapped only while the Dataset is built
    peaks = [np.abs(crop).max() for crop in wespeaker_crops(banks, list_file, dataset_args(1.0), 20)]
    assert all(0.98 < peak < 1.0 for peak in peaks), peaks            # WeSpeaker's own output normalisation


def test_register_installs_the_augmentation_where_the_trainer_reads_it():
    import wespeaker.bin.train as ws_train

    from nawsv.integrations.wespeaker.registry import register

    register()
    assert getattr(ws_train.Dataset, "nawsv_wrapped", False)


@pytest.mark.parametrize("recipe, stage4", [("mini", "egs/mini/conf/finetune.yaml"),
                                            ("voxceleb", "egs/voxceleb/conf/vox1_wavlm_base_plus_finetune.yaml")])
def test_shipped_configs_augment_as_stage4(recipe, stage4):
    expected = load_config(FinetuneConfig, ROOT / stage4).augment
    paths = sorted((ROOT / "egs" / recipe / "conf" / "wespeaker").glob("*.yaml"))
    assert len(paths) == 3
    for path in paths:
        configs = yaml.safe_load(path.read_text())
        assert configs["noise_data"] == "data/musan_train/lmdb" and configs["reverb_data"] == "data/rirs/lmdb"
        assert augment.augment_config(configs["dataset_args"]) == expected, path
