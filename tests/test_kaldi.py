"""Kaldi tables and trial lists: round trips and the errors bad lists give."""
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from nawsv.formats.kaldi import (KaldiDir, Trial, check_trials_covered, read_kaldi_dir, read_table, read_trials,
                                 read_wav_scp, utt2spk_to_spk2utt, write_kaldi_dir, write_table, write_trials)
from nawsv.utils.errors import DataError


def test_table_round_trip_sorted(tmp_path: Path) -> None:
    table = {"b/2.wav": "/x/b 2.wav", "a/1.wav": "/x/a.wav", "A/0.wav": "/x/A.wav"}
    write_table(tmp_path / "wav.scp", table)
    lines = (tmp_path / "wav.scp").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["A/0.wav", "a/1.wav", "b/2.wav"]   # C-locale order
    assert read_table(tmp_path / "wav.scp", max_fields=None) == table


@pytest.mark.parametrize("path", ["/x/a  b.wav", "/x/a\tb.wav", "/x/a\nb.wav", "/x/a.wav "])
def test_a_path_other_readers_would_read_differently_is_refused(tmp_path: Path, path: str) -> None:
    """Single spaces are kept (key, then the rest of the line); WeSpeaker collapses runs of whitespace and a line
    break ends an entry, so those are refused when writing, and nothing is written."""
    write_table(tmp_path / "wav.scp", {"u": "/x/my corpus/a b.wav"})
    assert read_wav_scp(tmp_path / "wav.scp") == {"u": "/x/my corpus/a b.wav"}
    with pytest.raises(DataError, match=r"value of 'u' .* two spaces in a row"):
        write_table(tmp_path / "other.scp", {"u": path})
    assert not (tmp_path / "other.scp").exists()


def test_duplicate_key_names_file_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "utt2spk"
    path.write_text("u1 s1\nu2 s1\nu1 s2\n")
    with pytest.raises(DataError, match=r"utt2spk:3: duplicate key 'u1' \(first seen on line 1\)"):
        read_table(path)


@pytest.mark.parametrize("content, message", [
    ("u1 s1\n\nu2 s2\n", r":2: empty line"),
    ("u1 s1 extra\n", r":1: expected 2 fields, got 3"),
    ("u1\n", r":1: expected 2 fields, got 1"),
])
def test_malformed_lines(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "utt2spk"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_table(path)


def test_non_utf8_table(tmp_path: Path) -> None:
    path = tmp_path / "wav.scp"
    path.write_bytes(b"u1 /data/\xff\xfe.wav\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_table(path)


def test_missing_table(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "nope")


def test_kaldi_dir_round_trip_and_spk2utt(tmp_path: Path) -> None:
    data = KaldiDir({"s1/v/1.wav": "/a", "s1/v/2.wav": "/b", "s2/v/1.wav": "/c"},
                    {"s1/v/1.wav": "s1", "s1/v/2.wav": "s1", "s2/v/1.wav": "s2"},
                    {"s1/v/1.wav": 1.5, "s1/v/2.wav": 2.25, "s2/v/1.wav": 3.0})
    write_kaldi_dir(tmp_path, data)
    back = read_kaldi_dir(tmp_path)
    assert back.wav_scp == data.wav_scp and back.utt2spk == data.utt2spk and back.utt2dur == data.utt2dur
    assert read_table(tmp_path / "spk2utt", max_fields=None) == {"s1": "s1/v/1.wav s1/v/2.wav", "s2": "s2/v/1.wav"}
    assert utt2spk_to_spk2utt(data.utt2spk) == {"s1": ["s1/v/1.wav", "s1/v/2.wav"], "s2": ["s2/v/1.wav"]}


def test_utterance_without_speaker(tmp_path: Path) -> None:
    (tmp_path / "wav.scp").write_text("u1 /a.wav\nu2 /b.wav\n")
    (tmp_path / "utt2spk").write_text("u1 s1\n")
    with pytest.raises(DataError, match=r"1 utterance\(s\) in wav.scp have no speaker in utt2spk, e.g. 'u2'"):
        read_kaldi_dir(tmp_path)


def test_pipe_in_wav_scp_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "wav.scp").write_text("u1 sox a.wav -t wav - |\n")
    (tmp_path / "utt2spk").write_text("u1 s1\n")
    with pytest.raises(DataError, match="pipe command"):
        read_kaldi_dir(tmp_path)


def test_trial_forms(tmp_path: Path) -> None:
    vox = tmp_path / "vox.txt"
    vox.write_text("1 a b\n0 a c\n")
    kaldi = tmp_path / "kaldi.txt"
    kaldi.write_text("a b target\na c nontarget\n")
    expected = [Trial("a", "b", True), Trial("a", "c", False)]
    assert read_trials(vox) == expected
    assert read_trials(kaldi) == expected
    out = tmp_path / "out"
    write_trials(out, expected)
    assert out.read_text() == kaldi.read_text()
    unlabelled = tmp_path / "u.txt"
    unlabelled.write_text("a b\n")
    assert read_trials(unlabelled) == [Trial("a", "b", None)]


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("1 a b\na c target\n", r":2: .*kaldi form but earlier lines are in voxceleb form"),
    ("a b maybe\n", r":1: cannot parse trial"),
])
def test_bad_trials(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "trials"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_trials(path)


def test_trials_with_unknown_utterance() -> None:
    with pytest.raises(DataError, match=r"1 utterance\(s\) are not in xvector.scp, e.g. 'zz'"):
        check_trials_covered([Trial("a", "zz", True)], ["a", "b"], "trials", "xvector.scp")


def test_kaldiio_reads_our_tables(tmp_path: Path) -> None:
    """Sorted tables are what Kaldi/kaldiio scp readers expect: write an ark, index it with our writer."""
    vectors = {"b": np.arange(3, dtype=np.float32), "a": np.ones(3, dtype=np.float32)}
    kaldiio.save_ark(str(tmp_path / "x.ark"), vectors, scp=str(tmp_path / "x.scp"))
    table = read_table(tmp_path / "x.scp")
    write_table(tmp_path / "sorted.scp", table)
    loaded = kaldiio.load_scp(str(tmp_path / "sorted.scp"))
    assert list(loaded) == ["a", "b"]
    np.testing.assert_array_equal(loaded["b"], vectors["b"])
