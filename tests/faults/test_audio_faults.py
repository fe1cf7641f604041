"""Bad audio in every stage that reads audio (1: headers; 2, 3, 4, 5: samples).

Refused (missing file, zero samples, corrupt header, NaN/inf samples, and in stage 1 anything shorter than
min_duration): one ``ERROR:`` line naming the utterance key and the file, exit 2, finished outputs untouched;
stage 1 with ``on_bad_audio: skip`` leaves the file out, lists it in bad_audio.txt and counts it in the log.
Accepted (wrong sample rate: resampled; stereo: mixed down; a 0.2-s utterance where no minimum applies):
the stage completes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nawsv.bin.extract import main as extract_main
from nawsv.bin.make_noisy_sets import main as noisy_main
from nawsv.bin.prepare_data import main as prepare_main
from nawsv.bin.train import main as train_main
from nawsv.formats.kaldi import read_table
from nawsv.data.lists import Utterance, read_raw_list, write_raw_list
from tests.faults.conftest import (NON_UTF8, REFUSED_AUDIO, add_utterance, assert_user_error, cli, extract_args,
                                   noisy_args, snapshot, write_bad_audio)
from tests.test_extract import write_data_dir

STAGE1 = ["--override", "nj=1", "--override", "shards=false"]


@pytest.fixture
def tree(tiny_corpus: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the tiny test corpus (3 speakers x 3 utterances, VoxCeleb layout)."""
    return Path(shutil.copytree(tiny_corpus["voxceleb"] / "test" / "wav", tmp_path / "wav"))


def first_video(tree: Path) -> Path:
    return sorted(p for p in tree.glob("*/*") if p.is_dir())[0]


# ---- stage 1 ----

@pytest.mark.parametrize("kind", ["empty", "corrupt_header", "short"])
def test_stage1_refuses_bad_audio_and_keeps_the_old_set(kind: str, tree: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "data" / "test"
    assert cli(prepare_main, ["speakers", "--wav_root", tree, "--out", out, *STAGE1], capsys).rc == 0
    before = snapshot(out)
    bad = write_bad_audio(first_video(tree) / "bad.wav", kind)
    line = assert_user_error(cli(prepare_main, ["speakers", "--wav_root", tree, "--out", out, *STAGE1], capsys),
                             str(bad), "on_bad_audio: skip")
    assert "'" + "/".join(bad.parts[-3:]) + "'" in line             # the utterance key
    assert snapshot(out) == before


@pytest.mark.parametrize("kind", ["empty", "corrupt_header", "short"])
def test_stage1_skip_mode_leaves_bad_audio_out_and_counts_it(kind: str, tree: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    bad = write_bad_audio(first_video(tree) / "bad.wav", kind)
    out = tmp_path / "test"
    result = cli(prepare_main, ["speakers", "--wav_root", tree, "--out", out, *STAGE1, "--override",
                                "on_bad_audio=skip"], capsys)
    assert result.rc == 0, result.err
    wav_scp = read_table(out / "wav.scp", max_fields=None)
    assert len(wav_scp) == 9 and str(bad) not in wav_scp.values()
    listed = (out / "bad_audio.txt").read_text().splitlines()
    assert len(listed) == 1 and str(bad) in listed[0]
    assert "left out 1 bad file(s)" in result.err


def test_stage1_missing_corpus_or_trial_file(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_such_corpus"
    assert_user_error(cli(prepare_main, ["speakers", "--wav_root", missing, "--out", tmp_path / "o", *STAGE1],
                          capsys), str(missing))
    trials = tmp_path / "veri_test.txt"
    assert_user_error(cli(prepare_main, ["speakers", "--wav_root", tree, "--out", tmp_path / "o", *STAGE1,
                                         "--trials", f"O={trials}"], capsys), str(trials), "does not exist")
    assert not (tmp_path / "o").exists()


def test_stage1_wrong_rate_and_stereo_are_accepted(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    video = first_video(tree)
    write_bad_audio(video / "rate.wav", "wrong_rate")
    write_bad_audio(video / "stereo.wav", "stereo")
    out = tmp_path / "test"
    result = cli(prepare_main, ["speakers", "--wav_root", tree, "--out", out, *STAGE1], capsys)
    assert result.rc == 0, result.err
    durations = read_table(out / "utt2dur")
    prefix = "/".join(video.parts[-2:])
    assert durations[f"{prefix}/rate.wav"] == "1.000" and durations[f"{prefix}/stereo.wav"] == "1.000"
    assert "1 file(s) are not at 16000 Hz" in result.err
    strict = cli(prepare_main, ["speakers", "--wav_root", tree, "--out", tmp_path / "strict", *STAGE1,
                                "--override", "on_rate_mismatch=error"], capsys)
    assert_user_error(strict, "rate.wav", "8000 Hz", "on_rate_mismatch")


def test_stage1_non_utf8_file_name(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = write_bad_audio(first_video(tree) / f"{NON_UTF8}.wav", "stereo")
    line = assert_user_error(cli(prepare_main, ["speakers", "--wav_root", tree, "--out", tmp_path / "o", *STAGE1],
                                 capsys), "caf\\xe9.wav", "not valid UTF-8", "rename")
    assert "\udce9" not in line
    result = cli(prepare_main, ["speakers", "--wav_root", tree, "--out", tmp_path / "skip", *STAGE1, "--override",
                                "on_bad_audio=skip"], capsys)
    assert result.rc == 0, result.err
    assert str(bad) not in read_table(tmp_path / "skip" / "wav.scp", max_fields=None).values()
    assert "caf\\xe9.wav" in (tmp_path / "skip" / "bad_audio.txt").read_text(encoding="utf-8")
    assert "left out 1 bad file(s)" in result.err


# ---- stage 2 ----

@pytest.fixture
def clean_set(train_data: dict, tmp_path: Path) -> Path:
    """A private copy of the prepared tiny test set (9 utterances, trials O)."""
    return Path(shutil.copytree(train_data["test"], tmp_path / "data" / "tiny_test"))


@pytest.mark.parametrize("kind", REFUSED_AUDIO)
def test_stage2_refuses_bad_audio_and_keeps_finished_conditions(kind: str, train_data: dict, clean_set: Path,
                                                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "noisy"
    assert cli(noisy_main, noisy_args(train_data, clean_set, out), capsys).rc == 0
    condition = out / "tiny_test_noise_0"
    before = snapshot(condition)
    bad = write_bad_audio(tmp_path / "bad.wav", kind)
    add_utterance(clean_set, "zz/bad/bad.wav", bad)
    assert_user_error(cli(noisy_main, noisy_args(train_data, clean_set, out), capsys), "'zz/bad/bad.wav'", str(bad))
    after = snapshot(condition)
    for name in ("manifest.tsv", "wav.scp", "utt2spk", "condition.yaml", "trials/O"):
        assert after[name] == before[name], name                 # what marks the condition finished: untouched
    assert {k: v[0] for k, v in after.items() if k in before} == {k: v[0] for k, v in before.items()}


def test_stage2_accepts_wrong_rate_stereo_and_short(train_data: dict, clean_set: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    for kind in ("wrong_rate", "stereo", "short"):
        add_utterance(clean_set, f"zz/odd/{kind}.wav", write_bad_audio(tmp_path / f"{kind}.wav", kind))
    out = tmp_path / "noisy"
    result = cli(noisy_main, noisy_args(train_data, clean_set, out), capsys)
    assert result.rc == 0, result.err
    wav_scp = read_table(out / "tiny_test_noise_0" / "wav.scp", max_fields=None)
    assert len(wav_scp) == 12
    for kind, samples in (("wrong_rate", 16000), ("stereo", 16000), ("short", 3200)):
        info = sf.info(wav_scp[f"zz/odd/{kind}.wav"])
        assert (info.samplerate, info.channels, info.frames) == (16000, 1, samples), kind


# ---- stages 3 and 4 ----

def training_list(train_data: dict, root: Path, replace: dict[int, Path]) -> Path:
    """A copy of the dev training list whose utterances at the given positions point at other files."""
    utts = read_raw_list(train_data["dev"] / "raw.list")
    changed = [Utterance(u.key, str(replace[i]) if i in replace else u.wav, u.spk) for i, u in enumerate(utts)]
    write_raw_list(root / "raw.list", changed)
    return root


def train_argv(task: str, config: Path, data: Path, exp: Path, train_data: dict, *extra: str) -> list:
    argv = [task, "--config", config, "--train_data", data, "--musan", train_data["musan_train"], "--exp_dir", exp,
            "--device", "cpu", "--override", "epochs=1"]
    if task == "warmup":
        return argv + ["--override", "adapter_only_epochs=1", *extra]
    return argv + ["--rirs", train_data["rirs"], "--init", "none", "--override", "frozen_ssl_epochs=1",
                   "--override", "large_margin_epochs=0", "--override", "average_last=1", *extra]


@pytest.mark.parametrize("kind", REFUSED_AUDIO)
def test_stage3_refuses_bad_audio(kind: str, train_data: dict, tiny_configs: dict, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    bad = write_bad_audio(tmp_path / "bad.wav", kind)
    data = training_list(train_data, tmp_path / "list", {5: bad})
    key = read_raw_list(data / "raw.list")[5].key
    exp = tmp_path / "exp"
    result = cli(train_main, train_argv("warmup", tiny_configs["warmup"], data, exp, train_data,
                                        "--override", "data.num_workers=1"), capsys)
    assert_user_error(result, f"'{key}'", str(bad))
    assert not (exp / "student.pt").exists()


@pytest.mark.parametrize("kind", REFUSED_AUDIO)
def test_stage4_refuses_bad_audio(kind: str, train_data: dict, tiny_configs: dict, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    bad = write_bad_audio(tmp_path / "bad.wav", kind)
    data = training_list(train_data, tmp_path / "list", {2: bad})
    key = read_raw_list(data / "raw.list")[2].key
    result = cli(train_main, train_argv("finetune", tiny_configs["finetune"], data, tmp_path / "exp", train_data,
                                        "--override", "data.num_workers=1"), capsys)
    assert_user_error(result, f"'{key}'", str(bad))
    assert not (tmp_path / "exp" / "avg_model.pt").exists()


@pytest.mark.parametrize("task, final", [("warmup", "student.pt"), ("finetune", "avg_model.pt")])
def test_stages3_4_accept_wrong_rate_stereo_and_short(task: str, final: str, train_data: dict, tiny_configs: dict,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    odd = {i: write_bad_audio(tmp_path / f"{kind}.wav", kind) for i, kind in ((1, "wrong_rate"), (6, "stereo"),
                                                                              (11, "short"))}
    data = training_list(train_data, tmp_path / "list", odd)
    exp = tmp_path / "exp"
    result = cli(train_main, train_argv(task, tiny_configs[task], data, exp, train_data), capsys)
    assert result.rc == 0, result.err
    assert (exp / final).is_file() and (exp / "checkpoints" / "epoch_1.pt").is_file()


# ---- stage 5 ----

@pytest.mark.parametrize("kind", REFUSED_AUDIO)
def test_stage5_refuses_bad_audio_and_keeps_finished_embeddings(kind: str, tiny_model: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    data = write_data_dir(tmp_path / "set", [("a/1", 1.0), ("b/2", 1.2), ("c/3", 0.9)])
    out = tmp_path / "emb"
    assert cli(extract_main, extract_args(tiny_model, data, out), capsys).rc == 0
    before = snapshot(out)
    bad = write_bad_audio(tmp_path / "bad.wav", kind)
    add_utterance(data, "b/bad", bad)
    workers = 1 if kind == "nan" else 0                 # also through a loader worker process
    assert_user_error(cli(extract_main, extract_args(tiny_model, data, out, workers=workers), capsys), "'b/bad'",
                      str(bad))
    after = snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith("parts/")} == before


def test_stage5_accepts_wrong_rate_stereo_and_short(tiny_model: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    import kaldiio
    import soxr

    from nawsv.extract.embedder import Embedder
    from nawsv.models.speaker import load_speaker_model

    data = write_data_dir(tmp_path / "set", [("a/1", 1.0)])
    odd = {kind: write_bad_audio(tmp_path / f"{kind}.wav", kind, seed=i) for i, kind in
           enumerate(("wrong_rate", "stereo", "short"))}
    for kind, path in odd.items():
        add_utterance(data, f"z/{kind}", path)
    result = cli(extract_main, extract_args(tiny_model, data, tmp_path / "emb"), capsys)
    assert result.rc == 0, result.err
    vectors = kaldiio.load_scp(str(tmp_path / "emb" / "xvector.scp"))
    stereo, _ = sf.read(odd["stereo"], dtype="float32")
    rate, _ = sf.read(odd["wrong_rate"], dtype="float32")
    short, _ = sf.read(odd["short"], dtype="float32")
    embedder = Embedder(load_speaker_model(tiny_model), __import__("torch").device("cpu"))
    expected = {"stereo": stereo.mean(axis=1), "wrong_rate": soxr.resample(rate, 8000, 16000, quality="HQ"),
                "short": np.pad(short, (0, 0))}
    for kind, samples in expected.items():
        want = embedder.whole([samples.astype(np.float32)], 60 * 16000, 1)[0]
        np.testing.assert_allclose(vectors[f"z/{kind}"], want, rtol=0, atol=1e-5, err_msg=kind)
