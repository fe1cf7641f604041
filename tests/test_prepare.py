"""Stage 1 on the tiny synthetic corpus: Kaldi dirs, lists, shards, MUSAN parity and bad inputs."""
import hashlib
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from nawsv.data.audio import decode_audio, load_audio
from nawsv.formats.kaldi import read_kaldi_dir, read_table, read_trials
from nawsv.data.lists import iter_shard, read_raw_list, read_shard_list
from nawsv.data.lists import shard_groups
from nawsv.data.prepare import (PrepareConfig, musan_split, prepare_flat_bank, prepare_musan, prepare_speaker_set,
                                shard_bytes, size_text)
from nawsv.utils.config import load_config
from nawsv.utils.errors import AudioError, DataError, OutputError
from tests.conftest import ROOT, run_module

CFG = PrepareConfig(nj=1, shards=True, shard_size=4)


def copy_test_tree(tiny_corpus: dict[str, Path], tmp_path: Path) -> Path:
    root = tmp_path / "wav"
    shutil.copytree(tiny_corpus["voxceleb"] / "test" / "wav", root)
    return root


def test_speaker_set(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    wav_root = tiny_corpus["voxceleb"] / "test" / "wav"
    out = tmp_path / "data" / "test"
    prepare_speaker_set(wav_root, out, CFG, [("O", tiny_corpus["trials"])])
    data = read_kaldi_dir(out, need_utt2dur=True)
    files = sorted(wav_root.rglob("*.wav"))
    assert sorted(data.wav_scp) == sorted(str(p.relative_to(wav_root)) for p in files)
    for key, path in data.wav_scp.items():
        assert data.utt2spk[key] == key.split("/")[0]
        assert abs(data.utt2dur[key] - sf.info(path).duration) < 1e-3
    spk2utt = read_table(out / "spk2utt", max_fields=None)
    assert {s: u.split() for s, u in spk2utt.items()} == data.spk2utt
    original = [line.split() for line in tiny_corpus["trials"].read_text().splitlines()]
    converted = read_trials(out / "trials" / "O")
    assert [(t.enrol, t.test, t.target) for t in converted] == [(a, b, lab == "1") for lab, a, b in original]


def test_shards_hold_exactly_the_raw_list(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "test"
    prepare_speaker_set(tiny_corpus["voxceleb"] / "test" / "wav", out, CFG)
    raw = {u.key: u for u in read_raw_list(out / "raw.list")}
    shards = read_shard_list(out / "shard.list")
    assert len(shards) == -(-len(raw) // CFG.shard_size)
    seen = {}
    for shard in shards:
        for key, spk, audio in iter_shard(shard):
            assert key not in seen
            seen[key] = (spk, audio)
    assert set(seen) == set(raw)
    for key, (spk, audio) in seen.items():
        assert spk == raw[key].spk
        assert audio == Path(raw[key].wav).read_bytes()
        np.testing.assert_array_equal(decode_audio(audio, key, "shard"), load_audio(raw[key].wav))


def test_shards_are_asked_for_and_their_size_is_said_first(tiny_corpus: dict[str, Path], tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    assert load_config(PrepareConfig, ROOT / "conf" / "prepare.yaml", []).shards is False
    wav_root = tiny_corpus["voxceleb"] / "test" / "wav"
    prepare_speaker_set(wav_root, tmp_path / "raw_only", PrepareConfig(nj=1))
    assert (tmp_path / "raw_only" / "raw.list").is_file()
    assert not (tmp_path / "raw_only" / "shard.list").exists() and not (tmp_path / "raw_only" / "shards").exists()
    with caplog.at_level(logging.INFO, logger="nawsv.data.prepare"):
        prepare_speaker_set(wav_root, tmp_path / "sharded", CFG)
    written = sum(p.stat().st_size for p in (tmp_path / "sharded" / "shards").iterdir())
    said = next(r.getMessage() for r in caplog.records if "will take" in r.getMessage())
    assert f"will take {size_text(written)} (" in said
    groups = shard_groups(read_raw_list(tmp_path / "sharded" / "raw.list"), CFG.shard_size)
    assert shard_bytes(groups) == written                          # the estimate is the tar size, byte for byte


def test_shards_that_do_not_fit_are_refused_before_writing(tiny_corpus: dict[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    wav_root = tiny_corpus["voxceleb"] / "test" / "wav"
    out = tmp_path / "test"
    prepare_speaker_set(wav_root, out, PrepareConfig(nj=1))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    written = []
    monkeypatch.setattr("nawsv.data.prepare.write_shard", lambda path, utts: written.append(path))
    monkeypatch.setattr("nawsv.data.prepare.shutil.disk_usage", lambda path: SimpleNamespace(free=5000))
    with pytest.raises(OutputError) as error:
        prepare_speaker_set(wav_root, out, CFG)
    message = str(error.value)
    need = shard_bytes(shard_groups(read_raw_list(out / "raw.list"), CFG.shard_size))
    assert "\n" not in message and f"tar shards for {out} need {size_text(need)} but" in message
    assert "has 5.0 kB free" in message and "shards: false" in message
    assert not written and {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["test"]                         # no staging left behind


def test_rerun_is_idempotent(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "test"

    def snapshot() -> dict[str, str]:
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*")
                if p.is_file()}

    prepare_speaker_set(tiny_corpus["voxceleb"] / "test" / "wav", out, CFG, [("O", tiny_corpus["trials"])])
    first = snapshot()
    prepare_speaker_set(tiny_corpus["voxceleb"] / "test" / "wav", out, CFG, [("O", tiny_corpus["trials"])])
    assert snapshot() == first
    assert [p.name for p in tmp_path.iterdir()] == ["test"]       # no temporaries left behind


def test_musan_parity(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    split = musan_split(tiny_corpus["musan"])
    for half, parity in (("train", 0), ("test", 1)):
        assert split[half]
        for key, (_, category) in split[half].items():
            assert int(key[-4:]) % 2 == parity
            assert key.split("/")[0] == category
    assert set(split["train"]).isdisjoint(split["test"])
    prepare_musan(tiny_corpus["musan"], tmp_path, CFG)
    train = read_table(tmp_path / "musan_train" / "utt2cat")
    assert set(train) == set(split["train"])
    assert set(train.values()) == {"noise", "music", "speech"}


def test_rir_bank(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    prepare_flat_bank(tiny_corpus["rirs"], tmp_path / "rirs", "rir", CFG)
    cats = read_table(tmp_path / "rirs" / "utt2cat")
    assert len(cats) == 3 and set(cats.values()) == {"rir"}
    assert all(k.split("/")[0] in ("smallroom", "mediumroom", "largeroom") for k in cats)


def test_musan_file_without_index(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    musan = tmp_path / "musan"
    shutil.copytree(tiny_corpus["musan"], musan)
    shutil.copy(next(musan.glob("noise/*/*.wav")), musan / "noise" / "free-sound" / "extra.wav")
    with pytest.raises(DataError, match=r"extra.wav: MUSAN file names end in an index"):
        musan_split(musan)


def corrupt(root: Path) -> Path:
    victim = sorted(root.rglob("*.wav"))[1]
    victim.write_bytes(b"not audio at all")
    return victim


def test_corrupt_audio_error_then_skip(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    root = copy_test_tree(tiny_corpus, tmp_path)
    victim = corrupt(root)
    out = tmp_path / "out"
    prepare_speaker_set(tiny_corpus["voxceleb"] / "test" / "wav", out, CFG)
    before = (out / "wav.scp").read_bytes()
    with pytest.raises(AudioError, match=f"{victim.name}.*cannot read audio header.*on_bad_audio: skip"):
        prepare_speaker_set(root, out, CFG)
    assert (out / "wav.scp").read_bytes() == before                     # existing results untouched
    prepare_speaker_set(root, out, PrepareConfig(nj=1, on_bad_audio="skip", shards=False))
    key = str(victim.relative_to(root))
    assert key not in read_table(out / "wav.scp") and key in (out / "bad_audio.txt").read_text()


def test_wrong_rate_and_short_and_empty(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    root = copy_test_tree(tiny_corpus, tmp_path)
    files = sorted(root.rglob("*.wav"))
    sf.write(files[0], np.zeros(8000, dtype=np.float32) + 0.1, 8000)
    prepare_speaker_set(root, tmp_path / "ok", CFG)                    # resampled when read: accepted
    with pytest.raises(AudioError, match=r"sample rate is 8000 Hz.*on_rate_mismatch: error"):
        prepare_speaker_set(root, tmp_path / "x", PrepareConfig(nj=1, on_rate_mismatch="error"))
    sf.write(files[1], np.zeros(3200, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"0.200 s is shorter than min_duration 0.5"):
        prepare_speaker_set(root, tmp_path / "x", CFG)
    files[1].write_bytes(b"")
    with pytest.raises(AudioError, match=files[1].name):
        prepare_speaker_set(root, tmp_path / "x", CFG)
    assert not (tmp_path / "x").exists()


def test_trials_with_unknown_utterance(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    trials = tmp_path / "trials.txt"
    lines = tiny_corpus["trials"].read_text().splitlines()
    lines[2] = "1 id99999/xx/00001.wav " + lines[2].split()[2]
    trials.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"trials.txt:3: utterance 'id99999/xx/00001.wav' is not in the test set"):
        prepare_speaker_set(tiny_corpus["voxceleb"] / "test" / "wav", tmp_path / "t", CFG, [("O", trials)])


def test_bad_layout(tmp_path: Path, tiny_corpus: dict[str, Path]) -> None:
    with pytest.raises(DataError, match=r"expected <wav_root>/<speaker>/<video>/<utterance>"):
        prepare_speaker_set(tiny_corpus["voxceleb"] / "test", tmp_path / "t", CFG)
    with pytest.raises(DataError, match="does not exist"):
        prepare_speaker_set(tmp_path / "missing", tmp_path / "t", CFG)



def test_a_path_with_two_spaces_in_a_row_is_refused_before_any_work(tiny_corpus: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    root = copy_test_tree(tiny_corpus, tmp_path)
    first = sorted(root.rglob("*.wav"))[0]
    first.rename(first.with_name("a  b.wav"))
    with pytest.raises(DataError, match=r"a  b.wav: the path holds a tab, a line break, two spaces in a row"):
        prepare_speaker_set(root, tmp_path / "t", CFG)
    assert not (tmp_path / "t").exists()


def test_cli_error_is_one_line(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    root = copy_test_tree(tiny_corpus, tmp_path)
    corrupt(root)
    proc = run_module("nawsv.bin.prepare_data", "speakers", "--wav_root", str(root), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("ERROR: utterance") and "Traceback" not in proc.stderr
    proc = run_module("nawsv.bin.prepare_data", "speakers", "--wav_root", str(root), "--out", str(tmp_path / "o"),
                      "--override", "shard_sise=3")
    assert proc.returncode == 2 and "unknown config key(s) 'shard_sise'" in proc.stderr and "valid keys:" in proc.stderr


def test_cli_parallel_probe_matches_serial(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    wav_root = tiny_corpus["voxceleb"] / "dev" / "wav"
    for nj in ("1", "2"):
        run_module("nawsv.bin.prepare_data", "speakers", "--wav_root", str(wav_root), "--out",
                   str(tmp_path / nj), "--override", f"nj={nj}", "--override", "shards=true", "--override",
                   "shard_size=2", check=True)
    for name in ("wav.scp", "utt2spk", "spk2utt", "utt2dur", "raw.list"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()
    for a, b in zip(sorted((tmp_path / "1" / "shards").iterdir()), sorted((tmp_path / "2" / "shards").iterdir())):
        assert a.read_bytes() == b.read_bytes()
