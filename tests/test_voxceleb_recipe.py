"""egs/voxceleb on a miniature corpus written in the exact real layouts, plus the stage-1 pieces it relies on
(AAC conversion, merged speaker trees, size checks against the published corpora).

The miniature: VoxCeleb1 ``vox1_dev_wav/wav`` and ``vox1_test_wav/wav`` trees with the official trial-list file
names, VoxCeleb2 ``dev/aac`` with real .m4a files (written with PyAV; those tests skip without it), MUSAN with
its text files, RIRS_NOISES with the folders the recipe must ignore, Nonspeech100 with a 20 kHz file.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from nawsv.data.audio import load_audio, write_audio
from nawsv.formats.kaldi import KaldiDir, read_kaldi_dir, read_table, read_trials
from nawsv.data.m4a import convert_tree, decoder_problem
from nawsv.data.prepare import (KNOWN_SETS, PrepareConfig, check_known_size,
                                prepare_speaker_set)
from nawsv.data.synthetic import (Session, Voice, synthesize_music, synthesize_noise, synthesize_nonspeech,
                                  synthesize_rir, synthesize_utterance)
from nawsv.utils.errors import AudioError, ConfigError, DataError
from nawsv.utils.seeding import rng_for

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "voxceleb"
NO_DECODER = decoder_problem()
needs_decoder = pytest.mark.skipif(NO_DECODER is not None, reason=f"m4a tests skipped: {NO_DECODER}")

VOX1_DEV = ["id10001", "id10002", "id10003"]
VOX1_TEST = ["id10270", "id10271", "id10272"]
VOX2_DEV = ["id00012", "id00015"]
UTTS_PER_SPEAKER = 2
CATEGORIES = ("noise", "music", "babble", "nonspeech")
SNRS = (0, 5, 10, 15, 20)


# ---------------------------------------------------------------------------------------------------------------
# The miniature corpus in the real layouts


def _speech(seed: str, spk: str, index: int, duration: float) -> tuple[str, np.ndarray]:
    rng = rng_for(seed, "voice", spk)
    voice, session = Voice.sample(rng), Session.sample(rng)
    video = f"v{spk[-3:]}Ab{index % 2}Xy_"          # 11 characters, as YouTube ids
    urng = rng_for(seed, "utt", spk, index)
    return f"{spk}/{video}/{index + 1:05d}", synthesize_utterance(voice, session, duration, urng)


def _write_speakers(root: Path, speakers: list[str], seed: str, suffix: str, writer) -> dict[str, np.ndarray]:
    """Write ``<root>/<spk>/<video>/<nnnnn><suffix>``; return {key with suffix: samples}."""
    written = {}
    for spk in speakers:
        for index in range(UTTS_PER_SPEAKER):
            stem, audio = _speech(seed, spk, index, 1.0 + 0.2 * index)
            writer(root / f"{stem}{suffix}", audio)
            written[f"{stem}{suffix}"] = audio
    return written


def _vox_trials(keys: list[str]) -> list[tuple[str, str, str]]:
    """Every pair, labelled by speaker, in VoxCeleb's ``label enrol test`` form."""
    return [("1" if a.split("/")[0] == b.split("/")[0] else "0", a, b) for a, b in itertools.combinations(keys, 2)]


def _write_trial_file(path: Path, trials: list[tuple[str, str, str]]) -> None:
    path.write_text("".join(" ".join(t) + "\n" for t in trials), encoding="utf-8")


def build_corpora(root: Path, vox2: str | None = None) -> dict:
    """The miniature corpora; ``vox2`` is None, "m4a" (needs PyAV) or "wav" (an already decoded tree)."""
    vox1 = root / "voxceleb1"
    dev = _write_speakers(vox1 / "vox1_dev_wav" / "wav", VOX1_DEV, "dev", ".wav", write_audio)
    test = _write_speakers(vox1 / "vox1_test_wav" / "wav", VOX1_TEST, "test", ".wav", write_audio)
    test_keys, all_keys = sorted(test), sorted(dev) + sorted(test)
    trials = {"veri_test2.txt": _vox_trials(test_keys)}
    trials["veri_test.txt"] = trials["veri_test2.txt"] + [("1", test_keys[0], test_keys[0])]   # uncleaned: +1
    trials["list_test_all2.txt"] = _vox_trials(all_keys)
    trials["list_test_all.txt"] = trials["list_test_all2.txt"][:-1]
    trials["list_test_hard2.txt"] = [t for t in _vox_trials(all_keys) if t[1][:6] == t[2][:6]]
    trials["list_test_hard.txt"] = trials["list_test_hard2.txt"] + [("0", all_keys[0], all_keys[-1])]
    for name, rows in trials.items():
        _write_trial_file(vox1 / name, rows)

    musan = root / "musan"
    for index in range(12):
        write_audio(musan / "speech" / "librivox" / f"speech-librivox-{index:04d}.wav",
                    _speech("musan", f"id9{index:04d}", 0, 2.0)[1])
    for index in range(4):
        write_audio(musan / "noise" / "free-sound" / f"noise-free-sound-{index:04d}.wav",
                    synthesize_noise(2.0, rng_for("noise", index)))
        write_audio(musan / "music" / "fma" / f"music-fma-{index:04d}.wav",
                    synthesize_music(2.0, rng_for("music", index)))
    for text in ("README", "ANNOTATIONS", "speech/librivox/ANNOTATIONS", "music/fma/LICENSE"):
        (musan / text).write_text("not audio\n", encoding="utf-8")

    rirs = root / "RIRS_NOISES"
    for room in ("smallroom", "mediumroom", "largeroom"):
        write_audio(rirs / "simulated_rirs" / room / "Room001" / "Room001-00001.wav",
                    synthesize_rir(rng_for("rir", room), room))
    write_audio(rirs / "pointsource_noises" / "noise-free-sound-0001.wav", synthesize_noise(1.0, rng_for("ps")))
    write_audio(rirs / "real_rirs_isotropic_noises" / "RVB2014_type1_rir_largeroom1_near_angla.wav",
                synthesize_rir(rng_for("real"), "largeroom"))

    nonspeech = root / "Nonspeech"
    for index in range(3):
        write_audio(nonspeech / f"n{index + 1}.wav", synthesize_nonspeech(2.0, rng_for("ns", index)))
    sf.write(nonspeech / "n4.wav", synthesize_nonspeech(2.0, rng_for("ns", 4))[:32000], 20000)   # 20 kHz

    corpora = {"vox1": vox1, "musan": musan, "rirs": rirs, "nonspeech": nonspeech, "trials": trials,
               "dev": dev, "test": test}
    if vox2 == "m4a":
        from nawsv.data.m4a import write_m4a

        corpora["vox2"] = root / "voxceleb2"
        corpora["vox2_audio"] = _write_speakers(corpora["vox2"] / "dev" / "aac", VOX2_DEV, "vox2", ".m4a", write_m4a)
    elif vox2 == "wav":
        corpora["vox2_wav"] = root / "vox2_dev_wav"
        corpora["vox2_audio"] = _write_speakers(corpora["vox2_wav"], VOX2_DEV, "vox2", ".wav", write_audio)
    return corpora


def run_recipe(tmp_path: Path, corpora: dict, *args: str, nonspeech: bool = True) -> subprocess.CompletedProcess:
    """egs/voxceleb/run.sh on the miniature corpora, data and exp under ``tmp_path``."""
    command = ["bash", str(RECIPE / "run.sh"), "--python", sys.executable, "--nj", "1",
               "--data", str(tmp_path / "data"), "--exp", str(tmp_path / "exp"),
               "--vox1_root", str(corpora["vox1"]), "--musan_root", str(corpora["musan"]),
               "--rirs_root", str(corpora["rirs"]), *args]
    if nonspeech:
        command += ["--nonspeech_root", str(corpora["nonspeech"])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)


def expected_trials(rows: list[tuple[str, str, str]]) -> list[tuple[str, str, bool]]:
    return [(a, b, label == "1") for label, a, b in rows]


def converted(path: Path) -> list[tuple[str, str, bool]]:
    return [(t.enrol, t.test, t.target) for t in read_trials(path)]


def snr_db(clean: np.ndarray, noisy: np.ndarray, scale: float) -> float:
    """SNR of a mixture written as scale * (clean + noise), measured from the two signals alone."""
    noise = noisy / scale - clean
    return 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2))


# ---------------------------------------------------------------------------------------------------------------
# Stages 1-2 of the recipe


@pytest.fixture(scope="module")
def vox1_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("vox1_recipe")
    corpora = build_corpora(tmp / "corpora")
    proc = run_recipe(tmp, corpora, "--stage", "1", "--stop_stage", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp / "data", corpora, proc


def test_stage1_vox1_sets_and_trials(vox1_run) -> None:
    data, corpora, _ = vox1_run
    for name, part, speakers in (("vox1_dev", "dev", VOX1_DEV), ("vox1_test", "test", VOX1_TEST)):
        kaldi = read_kaldi_dir(data / name, need_utt2dur=True)
        assert sorted(kaldi.wav_scp) == sorted(corpora[part])
        assert sorted(kaldi.speakers) == speakers
        for key, path in kaldi.wav_scp.items():
            assert kaldi.utt2spk[key] == key.split("/")[0]
            assert Path(path) == corpora["vox1"] / f"vox1_{part}_wav" / "wav" / key
            assert abs(kaldi.utt2dur[key] - len(corpora[part][key]) / 16000) < 1e-3
    trials = data / "vox1_test" / "trials"
    assert sorted(p.name for p in trials.iterdir()) == ["vox1_O", "vox1_O_orig"]
    assert converted(trials / "vox1_O") == expected_trials(corpora["trials"]["veri_test2.txt"])
    assert converted(trials / "vox1_O_orig") == expected_trials(corpora["trials"]["veri_test.txt"])
    assert not (data / "vox1_all").exists() and not (data / "vox2_dev").exists()   # E/H: Vox2-trained only
    assert not (data / "vox1_test" / "shard.list").exists()                         # conf/prepare.yaml: raw only


def test_stage1_vox1_noise_banks(vox1_run) -> None:
    data, corpora, _ = vox1_run
    for half, parity in (("train", 0), ("test", 1)):
        utt2cat = read_table(data / f"musan_{half}" / "utt2cat")
        files = sorted(p for p in corpora["musan"].rglob("*.wav") if int(p.stem[-4:]) % 2 == parity)
        assert sorted(read_table(data / f"musan_{half}" / "wav.scp").values()) == sorted(str(p) for p in files)
        assert sorted(utt2cat) == sorted(p.relative_to(corpora["musan"]).with_suffix("").as_posix() for p in files)
        assert all(cat == key.split("/")[0] for key, cat in utt2cat.items())
    rirs = read_table(data / "rirs" / "wav.scp")
    assert sorted(rirs.values()) == sorted(str(p) for p in (corpora["rirs"] / "simulated_rirs").rglob("*.wav"))
    assert set(read_table(data / "rirs" / "utt2cat").values()) == {"rir"}
    nonspeech = read_table(data / "nonspeech" / "wav.scp")
    assert sorted(nonspeech) == ["n1", "n2", "n3", "n4"]
    assert float(read_table(data / "nonspeech" / "utt2dur")["n4"]) == pytest.approx(1.6, abs=1e-3)   # 20 kHz file


def test_stage1_warns_about_corpus_sizes(vox1_run) -> None:
    _, corpora, proc = vox1_run
    n_test, n_o = len(corpora["test"]), len(corpora["trials"]["veri_test2.txt"])
    assert (f"vox1_test: found {n_test} utterances of {len(VOX1_TEST)} speakers, the published corpus has "
            f"4,874 of 40") in proc.stderr
    assert f"vox1_dev: found {len(corpora['dev'])} utterances" in proc.stderr
    assert f"{n_o} trials, the official veri_test2.txt has 37,611" in proc.stderr


def test_stage2_noisy_conditions(vox1_run) -> None:
    data, corpora, _ = vox1_run
    names = sorted(f"vox1_test_{c}_{s}" for c in CATEGORIES for s in SNRS)
    assert sorted(p.name for p in data.iterdir() if p.name.startswith("vox1_test_")) == names
    for name in names:
        manifest = [line.split("\t") for line in (data / name / "manifest.tsv").read_text().splitlines()]
        rows = {fields[0]: fields for fields in manifest if fields[0] in corpora["test"]}
        assert sorted(rows) == sorted(corpora["test"])
        assert converted(data / name / "trials" / "vox1_O") == expected_trials(corpora["trials"]["veri_test2.txt"])
        wav_scp = read_table(data / name / "wav.scp")
        assert sorted(wav_scp) == sorted(corpora["test"])
        category, snr = name.split("_")[-2:]
        if category in ("noise", "nonspeech"):
            for key, fields in rows.items():
                clean = load_audio(corpora["vox1"] / "vox1_test_wav" / "wav" / key)
                noisy = load_audio(wav_scp[key])
                assert snr_db(clean, noisy, float(fields[7])) == pytest.approx(float(snr), abs=0.2)
    babble = [line.split("\t") for line in (data / "vox1_test_babble_0" / "manifest.tsv").read_text().splitlines()]
    for fields in babble:
        if fields[0] in corpora["test"]:
            talkers = fields[4].split(",")
            assert 3 <= len(talkers) <= 6 and len(set(talkers)) == len(talkers)
            assert all(int(k[-4:]) % 2 == 1 and k.startswith("speech/") for k in talkers)   # MUSAN test half


# ---------------------------------------------------------------------------------------------------------------
# VoxCeleb2 training: Vox1-E/H on all of VoxCeleb1, and the Vox2 dev tree (m4a converted once, or decoded)


@pytest.mark.parametrize("vox2", [pytest.param("m4a", marks=needs_decoder), "wav"])
def test_stage1_vox2(tmp_path: Path, vox2: str) -> None:
    corpora = build_corpora(tmp_path / "corpora", vox2)
    source = (["--vox2_root", str(corpora["vox2"])] if vox2 == "m4a" else ["--vox2_wav_dir", str(corpora["vox2_wav"])])
    proc = run_recipe(tmp_path, corpora, "--stage", "1", "--stop_stage", "1", "--train_corpus", "vox2", *source)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = tmp_path / "data"
    everything = read_kaldi_dir(data / "vox1_all")
    assert sorted(everything.wav_scp) == sorted({**corpora["dev"], **corpora["test"]})
    assert sorted(everything.speakers) == sorted(VOX1_DEV + VOX1_TEST)
    trials = data / "vox1_all" / "trials"
    for name, source_file in (("vox1_E", "list_test_all2.txt"), ("vox1_H", "list_test_hard2.txt"),
                              ("vox1_E_orig", "list_test_all.txt"), ("vox1_H_orig", "list_test_hard.txt")):
        assert converted(trials / name) == expected_trials(corpora["trials"][source_file])
    assert (data / "vox1_test" / "trials" / "vox1_O").is_file() and not (data / "vox1_dev").exists()
    vox2_dev = read_kaldi_dir(data / "vox2_dev")
    assert sorted(vox2_dev.speakers) == VOX2_DEV
    if vox2 == "wav":
        assert sorted(vox2_dev.wav_scp) == sorted(corpora["vox2_audio"])
        return
    tree = data / "audio" / "vox2_dev"
    assert sorted(vox2_dev.wav_scp) == sorted(k.replace(".m4a", ".flac") for k in corpora["vox2_audio"])
    for key, original in corpora["vox2_audio"].items():
        path = Path(vox2_dev.wav_scp[key.replace(".m4a", ".flac")])
        assert path == tree / key.replace(".m4a", ".flac")
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        decoded = sf.read(path, dtype="float32")[0]
        assert original.size <= decoded.size <= original.size + 2048       # AAC pads to whole 1024-sample frames
        assert snr_db(original, decoded[:original.size], 1.0) > 10          # lossy, but the same waveform


# ---------------------------------------------------------------------------------------------------------------
# The stage-1 pieces: conversion, merged trees, size checks


@needs_decoder
def test_convert_tree_jobs_resume_and_failures(tmp_path: Path) -> None:
    from nawsv.data.m4a import write_m4a

    src, dst = tmp_path / "aac", tmp_path / "flac"
    written = _write_speakers(src, VOX2_DEV, "conv", ".m4a", write_m4a)
    first = convert_tree(src, dst, job=0, num_jobs=2)
    second = convert_tree(src, dst, job=1, num_jobs=2, nj=2)
    assert (first.converted, second.converted) == (2, 2) and first.skipped == second.skipped == 0
    outputs = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file())
    assert outputs == sorted(k.replace(".m4a", ".flac") for k in written)
    stamps = {p: p.stat().st_mtime_ns for p in dst.rglob("*.flac")}
    again = convert_tree(src, dst)
    assert (again.converted, again.skipped) == (0, 4)
    assert {p: p.stat().st_mtime_ns for p in dst.rglob("*.flac")} == stamps         # nothing rewritten

    (src / "id00099" / "broken").mkdir(parents=True)
    (src / "id00099" / "broken" / "00001.m4a").write_bytes(b"not an mp4 file" * 20)
    with pytest.raises(AudioError, match="00001.m4a.*cannot decode"):
        convert_tree(src, dst)
    result = convert_tree(src, dst, on_bad_audio="skip")
    assert (result.converted, result.skipped, len(result.failed)) == (0, 4, 1)
    assert "broken/00001.m4a" in (dst / "convert_failed.txt").read_text()
    assert not list(dst.rglob("*.tmp")) and not (dst / "id00099").exists()


def test_convert_without_decoder_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)                 # `import av` now fails as if not installed
    (tmp_path / "aac" / "id1" / "v").mkdir(parents=True)
    (tmp_path / "aac" / "id1" / "v" / "1.m4a").write_bytes(b"x")
    with pytest.raises(DataError, match=r"PyAV is not installed.*pip install 'nawsv\[m4a\]'"):
        convert_tree(tmp_path / "aac", tmp_path / "flac")


def test_convert_rejects_bad_job_split_and_nested_output(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="0 <= job < num_jobs"):
        convert_tree(tmp_path, tmp_path / "out", job=2, num_jobs=2)
    if NO_DECODER is None:
        with pytest.raises(ConfigError, match="outside the source tree"):
            convert_tree(tmp_path, tmp_path / "out")


def test_speaker_tree_with_m4a_points_to_conversion(tmp_path: Path) -> None:
    tree = tmp_path / "aac" / "id00012" / "abc"
    tree.mkdir(parents=True)
    (tree / "00001.m4a").write_bytes(b"x")
    with pytest.raises(DataError, match="cannot be read by soundfile.*prepare_data convert"):
        prepare_speaker_set(tmp_path / "aac", tmp_path / "out", PrepareConfig(nj=1))
    assert not (tmp_path / "out").exists()


def test_merged_trees_and_clashes(tmp_path: Path) -> None:
    dev = _write_speakers(tmp_path / "dev", VOX1_DEV[:1], "m", ".wav", write_audio)
    test = _write_speakers(tmp_path / "test", VOX1_TEST[:1], "m", ".wav", write_audio)
    data = prepare_speaker_set([tmp_path / "dev", tmp_path / "test"], tmp_path / "all", PrepareConfig(nj=1))
    assert sorted(data.wav_scp) == sorted({**dev, **test})
    _write_speakers(tmp_path / "again", VOX1_DEV[:1], "m", ".wav", write_audio)
    with pytest.raises(DataError, match="exists in two trees"):
        prepare_speaker_set([tmp_path / "dev", tmp_path / "again"], tmp_path / "clash", PrepareConfig(nj=1))
    with pytest.raises(ConfigError, match="unknown corpus 'vox3_dev'"):
        prepare_speaker_set(tmp_path / "dev", tmp_path / "x", PrepareConfig(nj=1), expect="vox3_dev")


def test_known_sizes(caplog: pytest.LogCaptureFixture) -> None:
    assert KNOWN_SETS["vox1_all"].utterances == KNOWN_SETS["vox1_dev"].utterances + KNOWN_SETS["vox1_test"].utterances
    assert KNOWN_SETS["vox1_all"].speakers == KNOWN_SETS["vox1_dev"].speakers + KNOWN_SETS["vox1_test"].speakers
    utts = [f"id{s}/v/{u}.wav" for s in range(40) for u in range(2)]
    small = KaldiDir({u: "/x" for u in utts}, {u: u.split("/")[0] for u in utts}, {})
    with caplog.at_level(logging.WARNING, logger="nawsv"):
        warnings = check_known_size("vox1_test", small, [("vox1_O", Path("/t/veri_test2.txt"), 37_611),
                                                          ("vox1_H", Path("/t/list_test_hard2.txt"), 10),
                                                          ("mine", Path("/t/my_list.txt"), 3)])
    assert len(warnings) == 2 and len(caplog.records) == 2
    assert "found 80 utterances of 40 speakers, the published corpus has 4,874 of 40" in warnings[0]
    assert "10 trials, the official list_test_hard2.txt has 550,894" in warnings[1]
    utts = [f"id1/v/{u}.wav" for u in range(4874)]
    one_speaker = KaldiDir({u: "/x" for u in utts}, {u: "id1" for u in utts}, {})
    assert len(check_known_size("vox1_test", one_speaker)) == 1      # the right count of the wrong speakers
    utts = [f"id{u % 40}/v/{u}.wav" for u in range(4874)]
    right = KaldiDir({u: "/x" for u in utts}, {u: u.split("/")[0] for u in utts}, {})
    assert check_known_size("vox1_test", right, [("O", Path("veri_test2.txt"), 37_611)]) == []


# ---------------------------------------------------------------------------------------------------------------
# Stages 3-6 with a tiny model (runs once the engine has stages 5-6; their stage blocks are being written)

TINY_WARMUP = {
    "ssl": {"pretrained": None, "preset": "tiny", "adapter_dim": 8},
    "embed_dim": 32,
    "data": {"speakers_per_batch": 2, "crop_seconds": 0.8, "num_workers": 0},
    "augment": {"prob": 1.0, "types": {"noise": 1.0, "babble": 1.0, "music": 1.0, "babble_music": 1.0},
                "babble_talkers": [2, 3]},          # a partial section starts from AugmentConfig's own defaults
    "optim": {"lr": 1.0e-3, "lr_min": 1.0e-3, "schedule": "constant"},
    "run": {"seed": 1, "log_every_steps": 1},
    "epochs": 2,
    "adapter_only_epochs": 1,
}
TINY_FINETUNE = {
    "ssl": {"preset": "tiny", "adapter_dim": 8, "mask_time_prob": 0.05, "mask_time_length": 2,
            "mask_feature_prob": 0.0},
    "backend": {"channels": 32, "embed_dim": 16},
    "data": {"batch_size": 3, "crop_seconds": 0.8, "num_workers": 0},
    "augment": {"babble_talkers": [2, 3]},
    "optim": {"lr": 1.0e-3, "lr_min": 1.0e-4},
    "run": {"seed": 1, "log_every_steps": 1},
    "epochs": 2,
    "frozen_ssl_epochs": 1,
    "large_margin_epochs": 1,
    "large_margin_crop_seconds": 1.0,
    "average_last": 1,
}


TINY_EXTRACT = {"segments": {"num": 2, "seconds": 1.0}, "num_workers": 0}
# One epoch per stage, for the runs that check that a backbone or a protocol goes through every stage (the epoch
# schedules are tested by the tiny-model run here and by tests/test_train.py); the whole student, the SSL model
# and the large-margin stage still train.
ONE_EPOCH_WARMUP = dict(TINY_WARMUP, epochs=1, adapter_only_epochs=0)
ONE_EPOCH_FINETUNE = dict(TINY_FINETUNE, epochs=1, frozen_ssl_epochs=0, large_margin_epochs=1)


@pytest.mark.slow
def test_stages_3_to_6_tiny_model(vox1_run, tmp_path: Path) -> None:
    pytest.importorskip("nawsv.bin.extract", reason="stage 5 (nawsv.bin.extract) is not written yet")
    pytest.importorskip("nawsv.bin.score", reason="stage 6 (nawsv.bin.score) is not written yet")
    stages = next(line for line in subprocess.run(["bash", str(RECIPE / "run.sh"), "--help"], capture_output=True,
                                                  text=True).stdout.splitlines() if line.startswith("Stages:"))
    if not all(f"{n} " in stages for n in (5, 6)):
        pytest.skip(f"the stage engine (run.sh) has no stages 5-6 yet ({stages})")
    data, corpora, _ = vox1_run
    conf = tmp_path / "conf"                       # the recipe's config names, tiny contents
    conf.mkdir()
    for name, content in (("vox1_wavlm_base_plus_warmup.yaml", TINY_WARMUP),
                          ("vox1_wavlm_base_plus_finetune.yaml", TINY_FINETUNE), ("extract.yaml", TINY_EXTRACT)):
        (conf / name).write_text(yaml.safe_dump(content), encoding="utf-8")
    exp = tmp_path / "exp"
    proc = run_recipe(data.parent, corpora, "--stage", "3", "--stop_stage", "6", "--exp", str(exp),
                      "--conf", str(conf), "--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (exp / "warmup" / "student.pt").is_file() and (exp / "finetune" / "avg_model.pt").is_file()
    for condition in ["vox1_test"] + [f"vox1_test_{c}_{s}" for c in CATEGORIES for s in SNRS]:
        assert (exp / "embeddings" / condition / "xvector.scp").is_file(), condition
    header, *rows = [line.split("\t") for line in (exp / "results.tsv").read_text().splitlines()]
    conditions = {(row[header.index("trials")], row[header.index("condition")]) for row in rows}
    assert ("vox1_O", "clean") in conditions and ("vox1_O", "babble_0") in conditions
    for row in rows:
        assert 0.0 <= float(row[header.index("eer_percent")]) <= 100.0
    record = yaml.safe_load((exp / "protocol.yaml").read_text())
    assert record["protocol"] == "nawsv" and "warmup.teacher_input" in record["differs_from_released"]
    results = (exp / "results.md").read_text()
    assert "Protocol: **nawsv** (stages recorded: noisy, warmup, finetune, score)." in results
    assert "  - `warmup.teacher_input`: clean / noisy" in results and "(`eer: sweep`)" in results


# ---------------------------------------------------------------------------------------------------------------
# --protocol released, WeSpeaker's VoxCeleb1 layout, no Nonspeech100


def to_wespeaker_layout(vox1: Path) -> None:
    """vox1_{dev,test}_wav/wav -> dev/wav and test/wav, as WeSpeaker's data preparation unpacks VoxCeleb1."""
    for part in ("dev", "test"):
        (vox1 / part).mkdir()
        (vox1 / f"vox1_{part}_wav" / "wav").rename(vox1 / part / "wav")
        (vox1 / f"vox1_{part}_wav").rmdir()


def with_released_switches(stage: str, tiny: dict) -> dict:
    """A tiny config with every switch of ``stage`` at its released value (from nawsv/protocol.py)."""
    from nawsv.protocol import all_switches

    config = yaml.safe_load(yaml.safe_dump(tiny))
    for switch in all_switches([stage]):
        *parents, leaf = switch.key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = switch.released
    return config


def test_unknown_vox1_layout_lists_what_was_looked_for(tmp_path: Path) -> None:
    corpora = {"vox1": tmp_path / "nothing", "musan": tmp_path, "rirs": tmp_path}
    corpora["vox1"].mkdir()
    (corpora["vox1"] / "veri_test2.txt").write_text("1 id1/v/1.wav id1/v/2.wav\n", encoding="utf-8")
    proc = run_recipe(tmp_path, corpora, "--stage", "1", "--stop_stage", "1", nonspeech=False)
    assert proc.returncode != 0
    assert ("matches no VoxCeleb1 layout: looked for vox1_test_wav/wav (+ vox1_dev_wav/wav, the official zips) and "
            "test/wav (+ dev/wav, WeSpeaker's data preparation)") in proc.stderr


@pytest.mark.slow
def test_released_protocol_wespeaker_layout_without_nonspeech(tmp_path: Path) -> None:
    corpora = build_corpora(tmp_path / "corpora")
    to_wespeaker_layout(corpora["vox1"])
    conf = tmp_path / "conf"
    conf.mkdir()
    for name, content in (("released_vox1_wavlm_base_plus_warmup.yaml",
                           with_released_switches("warmup", ONE_EPOCH_WARMUP)),
                          ("released_vox1_wavlm_base_plus_finetune.yaml",
                           with_released_switches("finetune", ONE_EPOCH_FINETUNE)),
                          ("extract.yaml", TINY_EXTRACT)):
        (conf / name).write_text(yaml.safe_dump(content), encoding="utf-8")
    for name in ("released_noisy.yaml", "released_score.yaml", "prepare.yaml"):
        (conf / name).write_bytes((RECIPE / "conf" / name).read_bytes())
    exp = tmp_path / "exp_released"
    proc = run_recipe(tmp_path, corpora, "--stage", "1", "--stop_stage", "7", "--protocol", "released",
                      "--conf", str(conf), "--exp", str(exp), "--device", "cpu", nonspeech=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = tmp_path / "data"
    assert sorted(read_kaldi_dir(data / "vox1_test").wav_scp) == sorted(corpora["test"])
    assert not (data / "nonspeech").exists()
    built = sorted(p.name for p in (data / "released").iterdir())
    assert built == sorted(f"vox1_test_{c}_{s}" for c in CATEGORIES[:3] for s in SNRS)   # 15 MUSAN cells
    assert not list(data.glob("vox1_test_*"))                                            # nothing of protocol nawsv
    condition = yaml.safe_load((data / "released" / "vox1_test_noise_0" / "condition.yaml").read_text())
    assert (condition["level_floor"], condition["musan_chunks"], condition["clipping"]) == (1e-4, True, "clip")
    record = yaml.safe_load((exp / "protocol.yaml").read_text())
    assert record["protocol"] == "released" and record["differs_from_released"] == {}
    assert record["stages"] == ["noisy", "warmup", "finetune", "score"] and not record["missing"]
    results = (exp / "results.md").read_text()
    assert "Protocol: **released** (stages recorded: noisy, warmup, finetune, score)." in results
    assert "Every recorded switch has the released code's value." in results
    assert "(`eer: roc_interp`)" in results
    assert "vox1_test: no nonspeech cells: stage 2 did not build them" in results
    report = (exp / "report" / "report.md").read_text()
    assert "Protocol: **released**" in report and "No nonspeech cells were built" in report


# ---------------------------------------------------------------------------------------------------------------
# Backbones: --backbone chooses the configs and the experiment dir; small HuBERT and pre-LN models run stages 3-6

def _shown_options(*args: str) -> dict[str, str]:
    proc = subprocess.run(["bash", str(RECIPE / "run.sh"), *args, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^  --(\w+) +(.*)$", proc.stdout, re.M)}


@pytest.mark.parametrize("args, expected", [
    ((), {"backbone": "wavlm_base_plus", "warmup_config": "vox1_wavlm_base_plus_warmup.yaml",
          "exp": f"{RECIPE}/exp/vox1_nawsv"}),
    (("--backbone", "hubert_base"), {"warmup_config": "vox1_hubert_base_warmup.yaml",
                                     "finetune_config": "vox1_hubert_base_finetune.yaml",
                                     "exp": f"{RECIPE}/exp/vox1_hubert_base_nawsv"}),
    (("--backbone=wavlm_large", "--train_corpus", "vox2", "--skip_warmup", "true"),
     {"finetune_config": "baseline_finetune.yaml", "exp": f"{RECIPE}/exp/vox2_wavlm_large_baseline"}),
])
def test_backbone_option_chooses_configs_and_experiment(args: tuple, expected: dict) -> None:
    shown = _shown_options(*args)
    for name, value in expected.items():
        assert shown[name] == value, name


def test_unknown_backbone_lists_those_with_configs() -> None:
    proc = subprocess.run(["bash", str(RECIPE / "run.sh"), "--backbone", "hubert_xlarge", "--dry_run", "true"],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "--backbone 'hubert_xlarge' has no configs" in proc.stderr
    assert "choose from: hubert_base wavlm_base_plus wavlm_large" in proc.stderr


@pytest.mark.parametrize("path", sorted((RECIPE / "conf").glob("vox*_*.yaml")), ids=lambda p: p.name)
def test_recipe_configs_load_and_name_their_backbone(path: Path) -> None:
    from nawsv.models.config import resolve_preset
    from nawsv.train.finetune import FinetuneConfig
    from nawsv.train.warmup import WarmupConfig
    from nawsv.utils.config import load_config

    corpus, rest = path.stem.split("_", 1)
    backbone, phase = rest.rsplit("_", 1)
    cfg = load_config(WarmupConfig if phase == "warmup" else FinetuneConfig, path)
    assert cfg.ssl.preset == backbone and resolve_preset(backbone).family == backbone.split("_")[0]
    paper = load_config(type(cfg), RECIPE / "conf" / f"{corpus}_wavlm_base_plus_{phase}.yaml")
    assert dataclasses.replace(cfg, ssl=dataclasses.replace(cfg.ssl, preset=paper.ssl.preset)) == paper


TINY_BASELINE = dict(ONE_EPOCH_FINETUNE, ssl=dict(TINY_FINETUNE["ssl"], zero_init_adapters=True))


@pytest.mark.slow
@pytest.mark.parametrize("family, form, backbone", [("hubert", "post_ln", "hubert_base"),
                                                    ("wavlm", "pre_ln", "wavlm_large")])
def test_stages_3_to_6_and_the_baseline_with_other_backbones(vox1_run, tmp_path: Path, family: str, form: str,
                                                             backbone: str) -> None:
    from tests.ssl_models import save_arch

    data, corpora, _ = vox1_run
    pretrained = save_arch(tmp_path / "pretrained", family, form)
    conf = tmp_path / "conf"
    conf.mkdir()
    for name, content in ((f"vox1_{backbone}_warmup.yaml", ONE_EPOCH_WARMUP), (f"vox1_{backbone}_finetune.yaml",
                          ONE_EPOCH_FINETUNE), ("baseline_finetune.yaml", TINY_BASELINE),
                          ("extract.yaml", TINY_EXTRACT)):
        (conf / name).write_text(yaml.safe_dump(content), encoding="utf-8")
    common = ("--conf", str(conf), "--device", "cpu", "--backbone", backbone, "--pretrained", str(pretrained))
    exp = tmp_path / "exp"
    proc = run_recipe(data.parent, corpora, "--stage", "3", "--stop_stage", "6", "--exp", str(exp), *common)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    student = torch.load(exp / "warmup" / "student.pt", map_location="cpu", weights_only=True)
    assert student["backbone_config"]["model_type"] == family
    assert student["backbone_config"]["do_stable_layer_norm"] is (form == "pre_ln")
    for condition in ["vox1_test"] + [f"vox1_test_{c}_{s}" for c in CATEGORIES for s in SNRS]:
        assert (exp / "embeddings" / condition / "xvector.scp").is_file(), condition
    header, *rows = [line.split("\t") for line in (exp / "results.tsv").read_text().splitlines()]
    assert {row[header.index("condition")] for row in rows} >= {"clean", "babble_0"}
    baseline = tmp_path / "baseline"
    proc = run_recipe(data.parent, corpora, "--stage", "3", "--stop_stage", "4", "--exp", str(baseline),
                      "--skip_warmup", "true", *common)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warm-up skipped" in proc.stdout and not (baseline / "warmup").exists()
    model = torch.load(baseline / "finetune" / "avg_model.pt", map_location="cpu", weights_only=True)
    assert model["ssl"]["backbone_config"]["model_type"] == family
