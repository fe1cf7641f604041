"""Embedding loading (against kaldiio), cosine / segment / full scoring (against loops), score files."""
from __future__ import annotations

import itertools
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from nawsv.formats.kaldi import Trial
from nawsv.scoring.cosine import (full_scores, index_trials, pair_scores, segment_directions, trial_labels,
                                  utterance_directions)
from nawsv.scoring.embeddings import read_matrix_scp, read_vector_scp
from nawsv.scoring.score_files import read_scores, write_scores
from nawsv.utils.errors import DataError


def write_ark(directory: Path, name: str, items: dict[str, np.ndarray]) -> Path:
    with kaldiio.WriteHelper(f"ark,scp:{directory / (name + '.ark')},{directory / (name + '.scp')}") as writer:
        for key, value in items.items():
            writer(key, value)
    return directory / f"{name}.scp"


def random_keys(rng: np.random.Generator, count: int) -> list[str]:
    # keys of varying length, so records start at every alignment modulo 4
    return [f"id{10000 + i}/{'v' * int(rng.integers(1, 9))}/{i:05d}.wav" for i in range(count)]


def test_vectors_equal_kaldiio(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = {k: rng.standard_normal(24).astype(np.float32) for k in random_keys(rng, 50)}
    scp = write_ark(tmp_path, "xvector", items)
    table = read_vector_scp(scp)
    reference = kaldiio.load_scp(str(scp))
    assert table.keys == list(items)
    for i, key in enumerate(table.keys):
        assert table.vectors.dtype == np.float32
        assert np.array_equal(table.vectors[i], reference[key])
    assert table.index[table.keys[7]] == 7 and table.dim == 24


def test_matrices_equal_kaldiio_including_ragged_and_double(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    keys = random_keys(rng, 30)
    items = {k: rng.standard_normal((int(rng.integers(1, 7)), 8)).astype(np.float32) for k in keys}
    items[keys[3]] = items[keys[3]].astype(np.float64)      # double precision: read through kaldiio
    scp = write_ark(tmp_path, "xvector_seg", items)
    table = read_matrix_scp(scp)
    reference = kaldiio.load_scp(str(scp))
    assert table.keys == keys
    for i, key in enumerate(keys):
        assert np.array_equal(table.matrix(i), reference[key].astype(np.float32))


def test_several_arks_and_a_text_record(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    first = {f"a{i}": rng.standard_normal(6).astype(np.float32) for i in range(5)}
    second = {f"b{i}": rng.standard_normal(6).astype(np.float32) for i in range(4)}
    scp_a, scp_b = write_ark(tmp_path, "one", first), write_ark(tmp_path, "two", second)
    text_ark = tmp_path / "text.ark"
    text_ark.write_text("t0 [ 1 2 3 4 5 6 ]\n")          # a text-mode record: the offset points at "["
    merged = tmp_path / "merged.scp"
    lines = scp_b.read_text().splitlines() + scp_a.read_text().splitlines() + [f"t0 {text_ark}:3"]
    merged.write_text("\n".join(lines) + "\n")
    table = read_vector_scp(merged)
    assert table.keys == list(second) + list(first) + ["t0"]
    expected = np.stack(list(second.values()) + list(first.values()) + [np.arange(1, 7, dtype=np.float32)])
    assert np.array_equal(table.vectors, expected)


def test_missing_truncated_duplicate_and_mismatched(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    items = {k: rng.standard_normal(16).astype(np.float32) for k in random_keys(rng, 6)}
    scp = write_ark(tmp_path, "xvector", items)
    with pytest.raises(DataError, match="does not exist; run stage 5"):
        read_vector_scp(tmp_path / "absent.scp")
    cut = tmp_path / "cut.ark"
    cut.write_bytes((tmp_path / "xvector.ark").read_bytes()[:-10])
    (tmp_path / "cut.scp").write_text(scp.read_text().replace(str(tmp_path / "xvector.ark"), str(cut)))
    with pytest.raises(DataError, match=r"cut.scp:6: .*truncated"):
        read_vector_scp(tmp_path / "cut.scp")
    lines = scp.read_text().splitlines()
    (tmp_path / "dup.scp").write_text("\n".join(lines + [lines[2]]) + "\n")
    with pytest.raises(DataError, match=r"dup.scp:7: duplicate key .* \(first on line 3\)"):
        read_vector_scp(tmp_path / "dup.scp")
    (tmp_path / "noark.scp").write_text(lines[0].split()[0] + f" {tmp_path / 'gone.ark'}:9\n")
    with pytest.raises(DataError, match="gone.ark .* does not exist"):
        read_vector_scp(tmp_path / "noark.scp")
    with pytest.raises(DataError, match="is a vector, but xvector.scp must hold matrices"):
        read_matrix_scp(scp)
    other = write_ark(tmp_path, "mixed", {"x": np.ones(16, np.float32), "y": np.ones(8, np.float32)})
    with pytest.raises(DataError, match="'y' has dimension 8 but the first one .* has 16"):
        read_vector_scp(other)


def test_cosine_and_segment_scores_equal_loops() -> None:
    rng = np.random.default_rng(4)
    keys = [f"u{i}" for i in range(12)]
    vectors = rng.standard_normal((12, 10)).astype(np.float32)
    segments = rng.standard_normal((12, 5, 10)).astype(np.float32)
    from nawsv.scoring.embeddings import MatrixTable, VectorTable

    vec_table = VectorTable(keys=keys, source=Path("v.scp"), vectors=vectors)
    seg_table = MatrixTable(keys=keys, source=Path("s.scp"), rows=segments.reshape(-1, 10),
                            row_splits=np.arange(0, 61, 5))
    trials = [Trial(keys[a], keys[b], a % 3 == b % 3) for a, b in rng.integers(0, 12, (40, 2))]
    index = index_trials(trials, vec_table.index, "trials/t", "v.scp")
    cosine = pair_scores(utterance_directions(vec_table), index)
    segment = pair_scores(segment_directions(seg_table), index_trials(trials, seg_table.index, "trials/t", "s.scp"))
    full = full_scores(cosine, segment)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    for n, trial in enumerate(trials):
        e, t = keys.index(trial.enrol), keys.index(trial.test)
        expected_cos = cos(vectors[e].astype(np.float64), vectors[t].astype(np.float64))
        pairs = [cos(segments[e, i].astype(np.float64), segments[t, j].astype(np.float64))
                 for i, j in itertools.product(range(5), range(5))]
        assert cosine[n] == pytest.approx(expected_cos, abs=1e-6)
        assert segment[n] == pytest.approx(sum(pairs) / 25, abs=1e-6)
        assert full[n] == pytest.approx((expected_cos + sum(pairs) / 25) / 2, abs=1e-6)
    assert trial_labels(trials).tolist() == [t.target for t in trials]


def test_ragged_segment_means_equal_loop() -> None:
    rng = np.random.default_rng(5)
    from nawsv.scoring.embeddings import MatrixTable

    counts = [3, 5, 1, 4]
    rows = rng.standard_normal((sum(counts), 6)).astype(np.float32)
    table = MatrixTable(keys=["a", "b", "c", "d"], source=Path("s.scp"), rows=rows,
                        row_splits=np.concatenate(([0], np.cumsum(counts))))
    directions = segment_directions(table)
    for i in range(4):
        segs = table.matrix(i).astype(np.float64)
        expected = np.mean(segs / np.linalg.norm(segs, axis=1, keepdims=True), axis=0)
        assert np.allclose(directions[i], expected, atol=1e-6)


def test_unknown_utterance_names_trials_key_and_scp() -> None:
    trials = [Trial("a", "b", True), Trial("a", "zz/missing.wav", False)]
    with pytest.raises(DataError, match=r"trial list data/t/trials/O: 1 utterance\(s\) have no embedding in "
                                        r"exp/xvector.scp, e.g. 'zz/missing.wav'"):
        index_trials(trials, {"a": 0, "b": 1}, "data/t/trials/O", "exp/xvector.scp")


def test_zero_embedding_is_an_error() -> None:
    from nawsv.scoring.embeddings import VectorTable

    table = VectorTable(keys=["a", "b"], source=Path("x.scp"), vectors=np.array([[1, 0], [0, 0]], np.float32))
    with pytest.raises(DataError, match="'b' is all zeros"):
        utterance_directions(table)


def test_score_file_keeps_trial_order_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    trials = [Trial(f"e{i}", f"t{(i * 7) % 13}", bool(i % 2)) for i in range(13)][::-1]
    scores = rng.standard_normal(13).astype(np.float32)
    path = tmp_path / "scores" / "x.score"
    write_scores(path, trials, scores)
    lines = path.read_text().splitlines()
    assert [tuple(line.split()[:2]) for line in lines] == [(t.enrol, t.test) for t in trials]
    assert [line.split()[3] for line in lines] == ["target" if t.target else "nontarget" for t in trials]
    pairs, read_back, labels = read_scores(path)
    assert np.array_equal(read_back, scores)                 # float32 values survive exactly
    assert labels.tolist() == [t.target for t in trials]
    unlabelled = [Trial(t.enrol, t.test, None) for t in trials]
    write_scores(tmp_path / "u.score", unlabelled, scores)
    assert read_scores(tmp_path / "u.score")[2] is None
    assert not list((tmp_path / "scores").glob(".*tmp"))
