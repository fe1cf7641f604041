"""The array-backed utterance store: packed strings, path tables, utt2dur lengths and the cached index."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nawsv.data.audio import load_audio
from nawsv.formats.kaldi import read_table
from nawsv.data.lists import Utterance, read_raw_list, write_raw_list
from nawsv.data.prepare import PrepareConfig, prepare_speaker_set
from nawsv.data.store import PackedStrings, UtteranceStore, fit_window
from nawsv.utils.errors import DataError
from nawsv.utils.seeding import rng_for


@pytest.fixture(scope="module")
def prepared(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stage-1 output of the tiny dev set, raw lists and shards (tests that edit lists use data_dir)."""
    out = tmp_path_factory.mktemp("store") / "dev"
    prepare_speaker_set(tiny_corpus["voxceleb"] / "dev" / "wav", out, PrepareConfig(nj=1, shards=True, shard_size=5))
    return out


@pytest.fixture
def data_dir(prepared: Path, tmp_path: Path) -> Path:
    """A writable copy of the raw-list part of the prepared set."""
    copy = tmp_path / "dev"
    copy.mkdir()
    for name in ("raw.list", "utt2dur", "utt2spk", "wav.scp"):
        shutil.copy(prepared / name, copy / name)
    return copy


def test_packed_strings_round_trip_and_gather() -> None:
    words = ["id1/a.wav", "", "ünï/çødé", "x" * 300, "id1/b.wav"]
    packed = PackedStrings.from_strings(words)
    assert len(packed) == 5 and list(packed) == words and packed[-1] == words[-1] and packed[1:3] == words[1:3]
    assert packed == words and packed != words[:4] and packed == PackedStrings.from_strings(words)
    order = [4, 2, 2, 0]
    assert list(packed.take(np.array(order))) == [words[i] for i in order]
    with pytest.raises(IndexError):
        packed[5]


def test_store_matches_the_raw_list(prepared: Path) -> None:
    utts = read_raw_list(prepared / "raw.list")
    store = UtteranceStore.from_raw_list(prepared / "raw.list")
    assert store.keys == [u.key for u in utts] and store.speakers == [u.spk for u in utts]
    assert store.speaker_ids == sorted({u.spk for u in utts}) and store.labels.dtype == np.int32
    assert [store.speaker_ids[label] for label in store.labels] == [u.spk for u in utts]
    assert [store._audio.path(i, store.keys) for i in range(len(store))] == [u.wav for u in utts]
    assert store._audio.tails is None and len(store._audio.heads) == 1      # <root>/ + key for every path


def test_store_from_python_lists() -> None:
    speakers = ["b", "a", "b", "c"]
    keys = [f"u{i}" for i in range(4)]
    store = UtteranceStore(keys, speakers, "list", paths={key: f"/w/{i}.wav" for i, key in enumerate(keys)})
    assert store.speaker_ids == ["a", "b", "c"] and store.labels.tolist() == [1, 0, 1, 2] and store.speakers == speakers
    assert store.location(3) == "/w/3.wav" and store.lengths is None


def test_paths_that_do_not_end_with_their_key(tmp_path: Path, prepared: Path) -> None:
    utts = read_raw_list(prepared / "raw.list")
    renamed = [Utterance(f"utt{i:03d}", u.wav, u.spk) for i, u in enumerate(utts)]
    write_raw_list(tmp_path / "raw.list", renamed)
    store = UtteranceStore.from_raw_list(tmp_path / "raw.list")
    assert store._audio.tails is not None
    assert [store._audio.path(i, store.keys) for i in range(len(store))] == [u.wav for u in renamed]
    np.testing.assert_array_equal(store.read(3), load_audio(renamed[3].wav))


def test_other_json_spellings_are_read(tmp_path: Path) -> None:
    lines = [{"spk": "s1", "key": "a", "wav": "/w/a.wav"}, {"key": "b\"q", "wav": "/w/b.wav", "spk": "s\u00e9"}]
    (tmp_path / "raw.list").write_text("".join(json.dumps(obj) + "\n" for obj in lines), encoding="utf-8")
    store = UtteranceStore.from_raw_list(tmp_path / "raw.list")
    assert store.keys == ["a", "b\"q"] and store.speakers == ["s1", "s\u00e9"]


@pytest.mark.parametrize("content, message", [
    ('{"key": "a", "wav": "/a.wav", "spk": "s"}\nnot json\n', r"raw.list:2: not a JSON object"),
    ('{"key": "a", "wav": "/a.wav", "spk": "s"}\n{"key": "a", "wav": "/b.wav", "spk": "s"}\n',
     r"raw.list:2: duplicate key 'a'"),
    ('{"key": "a", "wav": 3, "spk": "s"}\n', r"raw.list:1: each line needs string fields"),
    ("", r"raw.list is empty"),
])
def test_bad_lists_keep_the_list_reader_errors(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "raw.list").write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        UtteranceStore.from_data_dir(tmp_path)
    with pytest.raises(DataError, match="does not exist; run stage 1"):
        UtteranceStore.from_data_dir(tmp_path / "missing")
    with pytest.raises(DataError, match=r"unknown list type 'tsv'; choose from \['raw', 'shard'\]"):
        UtteranceStore.from_data_dir(tmp_path, "tsv")


def test_lengths_come_from_utt2dur(prepared: Path) -> None:
    store = UtteranceStore.from_data_dir(prepared)
    durations = read_table(prepared / "utt2dur")
    for index in range(len(store)):
        exact = len(store.read(index))
        assert store.num_samples(index) == round(float(durations[store.keys[index]]) * 16000)
        assert abs(store.num_samples(index) - exact) <= 8                 # utt2dur is rounded to 1 ms
    assert UtteranceStore.from_raw_list(prepared / "raw.list").num_samples(0) == len(store.read(0))


def test_crops_are_exact_length_when_utt2dur_overstates(data_dir: Path) -> None:
    store = UtteranceStore.from_data_dir(data_dir)
    exact = len(store.read(0))
    table = read_table(data_dir / "utt2dur")
    table[store.keys[0]] = f"{(exact + 8) / 16000:.6f}"                   # 8 samples too long
    (data_dir / "utt2dur").write_text("".join(f"{k} {v}\n" for k, v in table.items()), encoding="utf-8")
    store = UtteranceStore.from_data_dir(data_dir)
    assert store.num_samples(0) == exact + 8
    whole = store.read(0)
    ends = 0
    for draw in range(200):
        crop = store.read_crop(0, exact - 4, rng_for("crop", draw))
        assert len(crop) == exact - 4
        start = int(rng_for("crop", draw).integers(0, 13))
        np.testing.assert_array_equal(crop, whole[min(start, 4):min(start, 4) + exact - 4])
        ends += start >= 4
    assert ends > 0                                                       # the fallback ran


def test_fit_window() -> None:
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_window(x, 2, 5), x[2:7])
    np.testing.assert_array_equal(fit_window(x, 8, 5), x[5:])
    np.testing.assert_array_equal(fit_window(x, 0, 12), np.resize(x, 12))


def test_missing_duration_is_an_error(data_dir: Path) -> None:
    table = read_table(data_dir / "utt2dur")
    dropped = next(iter(table))
    del table[dropped]
    (data_dir / "utt2dur").write_text("".join(f"{k} {v}\n" for k, v in table.items()), encoding="utf-8")
    with pytest.raises(DataError, match=f"utt2dur: no duration for utterance '{dropped}'.*rerun stage 1"):
        UtteranceStore.from_data_dir(data_dir)


def test_index_is_reused_and_follows_list_changes(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = UtteranceStore.from_data_dir(data_dir)
    index = data_dir / "raw.list.index.npz"
    assert index.is_file()
    monkeypatch.setattr("nawsv.data.store._parse_raw_list", lambda path: pytest.fail("list parsed again"))
    again = UtteranceStore.from_data_dir(data_dir)
    assert again.keys == first.keys and again.speaker_ids == first.speaker_ids and again.source == first.source
    for name in ("labels", "lengths"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    np.testing.assert_array_equal(again.read(2), first.read(2))
    monkeypatch.undo()
    utts = read_raw_list(data_dir / "raw.list")
    write_raw_list(data_dir / "raw.list", [Utterance(u.key, u.wav, "renamed") if i == 0 else u
                                           for i, u in enumerate(utts)])
    changed = UtteranceStore.from_data_dir(data_dir)
    assert changed.speakers[0] == "renamed" and "renamed" in changed.speaker_ids
    index.write_bytes(b"not an archive")
    assert UtteranceStore.from_data_dir(data_dir).speakers == changed.speakers


def test_shard_store_uses_its_own_index(prepared: Path, tmp_path: Path) -> None:
    raw = UtteranceStore.from_data_dir(prepared, "raw")
    shard = UtteranceStore.from_data_dir(prepared, "shard")
    assert (prepared / "shard.list.index.npz").is_file()
    reopened = UtteranceStore.from_data_dir(prepared, "shard")
    assert reopened.keys == raw.keys and reopened.speakers == raw.speakers
    for index in (0, len(raw) - 1):
        np.testing.assert_array_equal(reopened.read(index), shard.read(index))
        rng_a, rng_b = rng_for("c", index), rng_for("c", index)
        np.testing.assert_array_equal(reopened.read_crop(index, 8000, rng_a), raw.read_crop(index, 8000, rng_b))


def test_subset_keeps_paths_labels_and_lengths(prepared: Path) -> None:
    store = UtteranceStore.from_data_dir(prepared)
    picked = [7, 0, 3]
    part = store.subset(picked)
    assert part.keys == [store.keys[i] for i in picked] and part.speaker_ids == store.speaker_ids
    np.testing.assert_array_equal(part.labels, store.labels[picked])
    np.testing.assert_array_equal(part.lengths, store.lengths[picked])
    np.testing.assert_array_equal(part.read(1), store.read(0))
