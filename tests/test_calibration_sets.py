"""Calibration sets (stage 2) from the training set with the training noise bank, and their quality tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nawsv.bin.make_calibration_sets import main as calibration_sets_main
from nawsv.bin.measure_quality import main as quality_main
from nawsv.data.audio import load_audio
from nawsv.formats.kaldi import read_kaldi_dir, read_table
from nawsv.data.noisy_sets import read_manifest
from nawsv.data.prepare import PrepareConfig, prepare_speaker_set
from nawsv.utils.errors import DataError
from tests.test_augment import build_banks


def test_calibration_sets_are_a_seeded_training_subset_noised_with_the_training_bank(tiny_corpus: dict[str, Path],
                                                                                   tmp_path: Path) -> None:
    banks = build_banks(tiny_corpus, tmp_path / "banks")
    train = tmp_path / "data" / "tiny_dev"
    prepare_speaker_set(tiny_corpus["voxceleb"] / "dev" / "wav", train, PrepareConfig(nj=1, shards=False))
    args = ["--train_data", str(train), "--musan", str(banks["musan_train"]), "--out_root", str(tmp_path / "data"),
            "--override", "calibration.utts_per_speaker=2", "--override", "calibration.categories=[noise]",
            "--override", "calibration.snrs=[5]"]
    assert calibration_sets_main(args) == 0
    source = read_kaldi_dir(train)
    clean = read_kaldi_dir(tmp_path / "data" / "tiny_dev_calib")
    assert set(clean.utt2spk) <= set(source.utt2spk)
    assert all(clean.utt2spk[u] == source.utt2spk[u] for u in clean.utt2spk)
    assert sorted(len(u) for u in clean.spk2utt.values()) == [2] * len(source.speakers)
    noisy = tmp_path / "data" / "tiny_dev_calib_noise_5"
    rows = read_manifest(noisy / "manifest.tsv")
    train_noise = set(read_table(banks["musan_train"] / "wav.scp"))
    assert {r.utt for r in rows} == set(clean.utt2spk)
    assert all(key in train_noise for r in rows for key in r.noise_keys)           # never the test half
    # the same options keep the sets; another seed would redraw them and is refused
    assert calibration_sets_main(args) == 0
    with pytest.raises(DataError, match="drawn differently"):
        calibration_sets_main([*args, "--override", "calibration.seed=3"])

    out = tmp_path / "quality"
    assert quality_main(["--data_root", str(tmp_path / "data"), "--sets", "tiny_dev_calib*", "--out_root",
                         str(out)]) == 0
    durations = read_table(out / "tiny_dev_calib" / "utt2dur")
    key = sorted(clean.wav_scp)[0]
    assert float(durations[key]) == pytest.approx(load_audio(clean.wav_scp[key]).size / 16000, abs=1e-3)
    clean_snr = np.mean([float(v) for v in read_table(out / "tiny_dev_calib" / "utt2snr").values()])
    noisy_snr = np.mean([float(v) for v in read_table(out / "tiny_dev_calib_noise_5" / "utt2snr").values()])
    assert clean_snr > noisy_snr + 3.0
    workers = tmp_path / "quality_nj2"                                # DataLoader workers read the same tables
    assert quality_main(["--data_root", str(tmp_path / "data"), "--sets", "tiny_dev_calib*", "--out_root",
                         str(workers), "--nj", "2"]) == 0
    for table in sorted(out.glob("*/utt2*")):
        assert (workers / table.relative_to(out)).read_bytes() == table.read_bytes(), table
