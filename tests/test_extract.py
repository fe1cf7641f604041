"""Stage 5: ark/scp equal a direct forward pass, segments follow the paper, sharding/resume/refusal work."""
from __future__ import annotations

import os
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

from nawsv.data.audio import load_audio, write_audio
from nawsv.formats.kaldi import write_table
from nawsv.data.noisy_sets import NoisySetConfig, make_noisy_sets
from nawsv.data.prepare import PrepareConfig, prepare_speaker_set
from nawsv.extract.config import ExtractConfig
from nawsv.extract.embedder import Embedder
from nawsv.extract.segments import cut_segments, segment_starts, whole_windows
from nawsv.extract.stage import SpeakerModelFile, extract_set
from nawsv.models.config import SSLConfig
from nawsv.models.registry import build_backend
from nawsv.models.speaker import load_speaker_model, save_speaker_model
from nawsv.models.ssl import build_student
from nawsv.scoring.embeddings import read_matrix_scp, read_vector_scp
from nawsv.utils.config import load_config
from nawsv.utils.errors import AudioError, ConfigError, DataError, ExperimentError
from tests.test_augment import build_banks

SR = 16000
# (key, seconds): unsorted on purpose; two utterances of equal length share a whole-utterance batch;
# 0.8 s is shorter than a segment, 3.0 s exactly one segment long.
UTTERANCES = [("spkB/u3", 4.7), ("spkA/u1", 0.8), ("spkA/u2", 3.0), ("spkB/u4", 4.7), ("spkA/u0", 6.1),
              ("spkC/u5", 2.0)]
CHEAP = ["segments.num=2", "segments.seconds=1.0", "num_workers=0", "chunk_size=2"]


def write_tiny_model(path: Path, seed: int = 0) -> Path:
    """A random-init tiny WavLM + small ECAPA written like stage 4's avg_model.pt (nothing is trained)."""
    ssl = build_student(SSLConfig(preset="tiny", init_seed=seed))
    kwargs = {"num_hidden_states": ssl.num_hidden_states, "input_dim": ssl.hidden_size, "channels": 32,
              "embed_dim": 16}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backend = build_backend("ecapa_tdnn_small", **kwargs)
        with torch.no_grad():       # non-trivial BatchNorm statistics, as after training
            for module in backend.modules():
                if isinstance(module, torch.nn.BatchNorm1d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
    save_speaker_model(path, ssl, "ecapa_tdnn_small", kwargs, backend)
    return path


def write_data_dir(directory: Path, utterances: list[tuple[str, float]], seed: int = 0) -> Path:
    """A Kaldi dir of random noisy tones with the given keys and durations."""
    rng = np.random.default_rng(seed)
    paths = {}
    for key, seconds in utterances:
        n = round(seconds * SR)
        t = np.arange(n) / SR
        audio = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(n)
        paths[key] = directory / "wav" / f"{key.replace('/', '_')}.wav"
        write_audio(paths[key], audio.astype(np.float32))
    write_table(directory / "wav.scp", paths)
    write_table(directory / "utt2spk", {key: key.split("/")[0] for key, _ in utterances})
    return directory


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine spinning OpenMP threads make small models 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "avg_model.pt")


@pytest.fixture(scope="module")
def model(model_file: Path) -> torch.nn.Module:
    return load_speaker_model(model_file)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data_dir(tmp_path_factory.mktemp("data") / "test_set", UTTERANCES)


def cfg_of(*overrides: str) -> ExtractConfig:
    return load_config(ExtractConfig, None, list(overrides))


def forward(model: torch.nn.Module, wav: np.ndarray) -> np.ndarray:
    """Brute force: one utterance, batch 1, eval mode, no autograd."""
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))[None])[0].numpy()


def hand_segments(wav: np.ndarray, seg: int, num: int) -> list[np.ndarray]:
    """The paper's windows, written out independently: wrap-pad short audio, linspace starts truncated."""
    if wav.size < seg:
        wav = np.tile(wav, seg // wav.size + 1)[:seg]
    starts = [int(s) for s in np.linspace(0, wav.size - seg, num)]
    return [wav[s:s + seg] for s in starts]


class CountingModel:
    """Wraps a model and counts the waveforms it embeds (to see what a rerun recomputes)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.rows = model, 0

    def __call__(self, wav: torch.Tensor) -> torch.Tensor:
        self.rows += wav.shape[0]
        return self.model(wav)


def counting_handle(model_file: Path, model: torch.nn.Module) -> tuple[SpeakerModelFile, CountingModel]:
    handle = SpeakerModelFile(model_file, "cpu")
    counter = CountingModel(model)
    handle.__dict__["embedder"] = Embedder(counter, torch.device("cpu"))
    return handle, counter


def read_pair(out_dir: Path, name: str) -> tuple[bytes, bytes]:
    return (out_dir / f"{name}.ark").read_bytes(), (out_dir / f"{name}.scp").read_bytes()


def no_temporaries(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# ---- segment protocol (pure numpy) ----

def test_segment_starts_by_hand() -> None:
    # 70,001 samples, 48,000-sample windows: linspace(0, 22001, 5) = 0, 5500.25, 11000.5, 16500.75, 22001
    assert segment_starts(70_001, 48_000, 5).tolist() == [0, 5500, 11000, 16500, 22001]
    assert segment_starts(48_000, 48_000, 5).tolist() == [0, 0, 0, 0, 0]       # exactly 3 s
    assert segment_starts(12_800, 48_000, 5).tolist() == [0, 0, 0, 0, 0]       # shorter than a segment
    assert segment_starts(48_001, 48_000, 3).tolist() == [0, 0, 1]


def test_segments_and_whole_windows_by_hand() -> None:
    x = np.arange(12_800, dtype=np.float32)                    # 0.8 s: wrap-padded to 3 s = 3.75 copies
    padded = np.concatenate([x, x, x, x[:9_600]])
    segments = cut_segments(x, 48_000, 5)
    assert segments.shape == (5, 48_000)
    assert all(np.array_equal(s, padded) for s in segments)
    y = np.arange(48_000, dtype=np.float32)                    # exactly one segment: five copies of it
    assert all(np.array_equal(s, y) for s in cut_segments(y, 48_000, 5))
    z = np.arange(70_001, dtype=np.float32)
    assert [int(s[0]) for s in cut_segments(z, 48_000, 5)] == [0, 5500, 11000, 16500, 22001]
    # whole utterance: itself up to the cap; above it ceil(75200/32000) = 3 windows of ceil(75200/3) = 25067
    w = np.arange(75_200, dtype=np.float32)
    assert np.array_equal(whole_windows(w, 80_000), w[None])
    windows = whole_windows(w, 32_000)
    assert windows.shape == (3, 25_067)
    for row, start in zip(windows, (0, 25_066, 50_133)):       # linspace(0, 50133, 3) = 0, 25066.5, 50133
        assert np.array_equal(row, w[start:start + 25_067])
    tiny = np.arange(500, dtype=np.float32)                    # below two frames: wrap-padded to 720 samples
    assert np.array_equal(whole_windows(tiny, 80_000)[0], np.concatenate([tiny, tiny[:220]]))


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="valid keys"):
        cfg_of("segments.count=3")
    with pytest.raises(ConfigError, match="nothing to extract"):
        cfg_of("segments.enabled=false", "whole.enabled=false")
    assert cfg_of().segments.samples == 48_000 and cfg_of().kinds == ["whole", "segments"]


# ---- stage 5 against brute force ----

def test_arks_equal_a_direct_forward_pass(model_file: Path, model: torch.nn.Module, data_dir: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "emb"
    cfg = cfg_of("segments.batch_size=1", "whole.batch_size=1", "num_workers=1", "chunk_size=4")
    assert extract_set(SpeakerModelFile(model_file, "cpu"), data_dir, out, cfg)
    keys = sorted(k for k, _ in UTTERANCES)
    whole = kaldiio.load_scp(str(out / "xvector.scp"))
    segs = kaldiio.load_scp(str(out / "xvector_seg.scp"))
    assert list(whole) == keys and list(segs) == keys                     # scp sorted by key
    for key in keys:
        wav = load_audio(data_dir / "wav" / f"{key.replace('/', '_')}.wav")
        assert whole[key].dtype == np.float32 and whole[key].shape == (16,)
        np.testing.assert_array_equal(whole[key], forward(model, wav))
        expected = np.stack([forward(model, s) for s in hand_segments(wav, 48_000, 5)])
        assert segs[key].dtype == np.float32 and segs[key].shape == (5, 16)
        np.testing.assert_array_equal(segs[key], expected)
    # stage 6's fast reader sees the same values
    table = read_vector_scp(out / "xvector.scp")
    assert table.keys == keys
    np.testing.assert_array_equal(table.vectors, np.stack([whole[k] for k in keys]))
    matrices = read_matrix_scp(out / "xvector_seg.scp")
    np.testing.assert_array_equal(matrices.matrix(2), segs[keys[2]])
    assert sorted(p.name for p in out.iterdir()) == ["extract_stamp.yaml", "xvector.ark", "xvector.scp",
                                                     "xvector_seg.ark", "xvector_seg.scp"]

    batched = tmp_path / "batched"                 # default batching (equal lengths share a batch)
    assert extract_set(SpeakerModelFile(model_file, "cpu"), data_dir, batched, cfg_of("num_workers=0"))
    for name, ref in (("xvector", whole), ("xvector_seg", segs)):
        got = kaldiio.load_scp(str(batched / f"{name}.scp"))
        for key in keys:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-5)


def test_long_utterances_average_capped_windows(model_file: Path, model: torch.nn.Module, data_dir: Path,
                                                tmp_path: Path) -> None:
    cfg = cfg_of("whole.max_seconds=2.0", "whole.batch_size=1", "segments.enabled=false", "num_workers=0")
    assert extract_set(SpeakerModelFile(model_file, "cpu"), data_dir, tmp_path / "emb", cfg)
    got = kaldiio.load_scp(str(tmp_path / "emb" / "xvector.scp"))
    assert not (tmp_path / "emb" / "xvector_seg.scp").exists()
    wav = load_audio(data_dir / "wav" / "spkB_u3.wav")                       # 4.7 s = 75,200 samples
    windows = [wav[s:s + 25_067] for s in (0, 25_066, 50_133)]
    expected = np.mean([forward(model, w).astype(np.float64) for w in windows], axis=0)
    np.testing.assert_allclose(got["spkB/u3"], expected, rtol=1e-6, atol=1e-7)
    short = load_audio(data_dir / "wav" / "spkC_u5.wav")                     # 2.0 s: under the cap
    np.testing.assert_array_equal(got["spkC/u5"], forward(model, short))


# ---- sharding, resume, skip, refusal ----

def test_job_split_merges_to_identical_bytes(model_file: Path, data_dir: Path, tmp_path: Path) -> None:
    cfg = cfg_of(*CHEAP)
    handle = SpeakerModelFile(model_file, "cpu")
    single, split = tmp_path / "single", tmp_path / "split"
    assert extract_set(handle, data_dir, single, cfg)
    done = [extract_set(handle, data_dir, split, cfg, job=j, num_jobs=3) for j in (2, 0, 1)]
    assert done == [False, False, True]                     # the last job to finish merges
    for name in ("xvector", "xvector_seg"):
        ark_a, scp_a = read_pair(single, name)
        ark_b, scp_b = read_pair(split, name)
        assert ark_a == ark_b
        assert scp_a.replace(str(single).encode(), b"<out>") == scp_b.replace(str(split).encode(), b"<out>")
    assert not (split / "parts").exists() and no_temporaries(tmp_path)


def test_partial_run_is_completed_and_finished_set_skipped(model_file: Path, model: torch.nn.Module,
                                                           data_dir: Path, tmp_path: Path) -> None:
    cfg = cfg_of(*CHEAP, "whole.batch_size=1")
    reference = tmp_path / "reference"
    assert extract_set(SpeakerModelFile(model_file, "cpu"), data_dir, reference, cfg)
    out = tmp_path / "out"
    handle, counter = counting_handle(model_file, model)
    assert not extract_set(handle, data_dir, out, cfg, job=0, num_jobs=3)     # chunk 0 of 0..2
    assert not extract_set(handle, data_dir, out, cfg, job=1, num_jobs=3)     # chunk 1
    assert not (out / "xvector.scp").exists()
    with pytest.raises(DataError, match="chunk 2"):
        extract_set(handle, data_dir, out, cfg, merge_only=True)
    parts = sorted((out / "parts").rglob("000000-*.ark"))
    assert len(parts) == 2                                   # chunk 0: whole + segments
    parts[0].unlink()                                        # as if job 0 had been killed half-way
    counter.rows = 0
    assert extract_set(handle, data_dir, out, cfg)           # a plain rerun redoes chunks 0 and 2 only
    per_utt = 1 + 2                                          # one whole window and two segments each
    assert counter.rows == 4 * per_utt
    for name in ("xvector", "xvector_seg"):
        assert read_pair(out, name)[0] == read_pair(reference, name)[0]
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    counter.rows = 0
    assert extract_set(handle, data_dir, out, cfg)           # finished: skipped, nothing recomputed or rewritten
    assert counter.rows == 0 and before == {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert no_temporaries(tmp_path)


def test_chunks_are_dealt_across_the_sets_of_a_command(model_file: Path, tmp_path: Path) -> None:
    """Sets a (1 chunk), b (2 chunks), c (1 chunk) are units 0 | 1 2 | 3: over 3 jobs, job 0 does a and c, jobs
    1 and 2 one chunk of b each (dealt per set, job 0 would do a, b's first chunk and c and job 2 nothing).
    The result equals one job's, byte for byte."""
    from nawsv.bin.extract import main
    from nawsv.utils.cli import run_main

    root = tmp_path / "data"
    write_data_dir(root / "a", UTTERANCES[:1])
    write_data_dir(root / "b", UTTERANCES[1:4])
    write_data_dir(root / "c", UTTERANCES[4:6])
    args = ["--model", str(model_file), "--data_root", str(root), "--device", "cpu", "--sets", "a", "b", "c",
            *[x for o in CHEAP for x in ("--override", o)]]                      # chunk_size=2
    split = tmp_path / "split"

    def done(name: str) -> list[str]:
        """Finished chunks of a set: all of them once it is merged, else its partial arks."""
        if (split / name / "xvector.scp").is_file():
            return ["merged"]
        return sorted(p.name[:6] for p in (split / name / "parts").rglob("*.xvector.ark"))

    assert main(args + ["--emb_root", str(split), "--job", "1", "--num_jobs", "3"]) == 0
    assert (done("a"), done("b"), done("c")) == ([], ["000000"], [])
    assert main(args + ["--emb_root", str(split), "--job", "2", "--num_jobs", "3"]) == 0
    assert (done("a"), done("b"), done("c")) == ([], ["merged"], [])              # job 2 finished b: it merged
    with pytest.raises(DataError) as failed:                              # sets a and c, named in one error
        main(args + ["--emb_root", str(split), "--num_jobs", "3", "--array_first", "4", "--merge", "true"])
    assert str(failed.value) == (f"merge: 2 chunk(s) are not done yet ({split}/a: chunk 0; {split}/c: chunk 0); "
                                 f"they belong to job 0 of 3 (array index 4): run them, then merge again "
                                 f"(sbatch --array=4 --export=ALL,ARRAY=4-6 <template> ...)")
    assert main(args + ["--emb_root", str(split), "--job", "0", "--num_jobs", "3"]) == 0
    assert (done("a"), done("b"), done("c")) == (["merged"], ["merged"], ["merged"])
    assert main(args + ["--emb_root", str(tmp_path / "single")]) == 0
    for name in ("a", "b", "c"):
        for kind in ("xvector", "xvector_seg"):
            assert read_pair(split / name, kind)[0] == read_pair(tmp_path / "single" / name, kind)[0]
    assert run_main(main, args + ["--emb_root", str(split), "--job", "3", "--num_jobs", "3"]) == 2


def test_other_model_or_protocol_is_refused(model_file: Path, data_dir: Path, tmp_path: Path) -> None:
    cfg = cfg_of(*CHEAP)
    out = tmp_path / "emb"
    assert extract_set(SpeakerModelFile(model_file, "cpu"), data_dir, out, cfg)
    before = {p: p.read_bytes() for p in out.iterdir()}
    other = write_tiny_model(tmp_path / "other.pt", seed=1)
    with pytest.raises(ExperimentError, match="sha256"):
        extract_set(SpeakerModelFile(other, "cpu"), data_dir, out, cfg)
    with pytest.raises(ExperimentError, match="segments_num"):
        extract_set(SpeakerModelFile(model_file, "cpu"), data_dir, out, cfg_of(*CHEAP, "segments.num=3"))
    assert before == {p: p.read_bytes() for p in out.iterdir()}
    (out / "extract_stamp.yaml").unlink()                    # outputs of unknown origin are not trusted either
    with pytest.raises(ExperimentError, match="unknown"):
        extract_set(SpeakerModelFile(model_file, "cpu"), data_dir, out, cfg)


def test_moved_output_dir_is_relinked(model_file: Path, data_dir: Path, tmp_path: Path) -> None:
    cfg = cfg_of(*CHEAP)
    assert extract_set(SpeakerModelFile(model_file, "cpu"), data_dir, tmp_path / "a", cfg)
    expected = kaldiio.load_scp(str(tmp_path / "a" / "xvector_seg.scp"))
    expected = {k: v.copy() for k, v in expected.items()}
    os.rename(tmp_path / "a", tmp_path / "b")
    assert extract_set(SpeakerModelFile(model_file, "cpu"), data_dir, tmp_path / "b", cfg)
    assert str(tmp_path / "b" / "xvector_seg.ark") in (tmp_path / "b" / "xvector_seg.scp").read_text()
    moved = kaldiio.load_scp(str(tmp_path / "b" / "xvector_seg.scp"))
    assert all(np.array_equal(moved[k], v) for k, v in expected.items())


# ---- inputs ----

def test_noisy_manifest_dir_equals_materialised(model_file: Path, tiny_corpus: dict[str, Path],
                                                tmp_path: Path) -> None:
    banks = build_banks(tiny_corpus, tmp_path / "banks")
    clean = tmp_path / "data" / "tiny_test"
    prepare_speaker_set(tiny_corpus["voxceleb"] / "test" / "wav", clean, PrepareConfig(nj=1, shards=False))
    noisy = NoisySetConfig(seed=3, categories=["babble"], snrs=[5.0])
    (lazy,) = make_noisy_sets(clean, tmp_path / "lazy", noisy, musan=banks["musan_test"], materialize=False)
    (real,) = make_noisy_sets(clean, tmp_path / "real", noisy, musan=banks["musan_test"], materialize=True)
    assert not (lazy / "wav.scp").exists() and (real / "wav.scp").exists()
    cfg = cfg_of(*CHEAP[:2], "num_workers=1", "chunk_size=4")
    handle = SpeakerModelFile(model_file, "cpu")
    assert extract_set(handle, lazy, tmp_path / "emb_lazy", cfg)
    assert extract_set(handle, real, tmp_path / "emb_real", cfg)
    assert extract_set(handle, clean, tmp_path / "emb_clean", cfg)
    for name in ("xvector", "xvector_seg"):
        assert read_pair(tmp_path / "emb_lazy", name)[0] == read_pair(tmp_path / "emb_real", name)[0]
        assert read_pair(tmp_path / "emb_lazy", name)[0] != read_pair(tmp_path / "emb_clean", name)[0]


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_audio_names_key_and_file(model_file: Path, tmp_path: Path, workers: int) -> None:
    data = write_data_dir(tmp_path / "bad_set", [("a/1", 1.0), ("a/2", 1.0)])
    broken = data / "wav" / "a_2.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    cfg = cfg_of(*CHEAP[:2], f"num_workers={workers}")
    with pytest.raises(AudioError) as info:
        extract_set(SpeakerModelFile(model_file, "cpu"), data, tmp_path / "emb", cfg)
    assert "'a/2'" in str(info.value) and str(broken) in str(info.value)
    assert "Traceback" not in str(info.value)
    assert not (tmp_path / "emb" / "xvector.scp").exists() and no_temporaries(tmp_path)


def test_command_line_with_set_patterns(model_file: Path, data_dir: Path, tmp_path: Path) -> None:
    from nawsv.bin.extract import main
    from nawsv.utils.cli import run_main

    root = tmp_path / "data"
    write_data_dir(root / "t1", UTTERANCES[:2])
    write_data_dir(root / "t1_noise_5", UTTERANCES[2:4])
    write_data_dir(root / "other", UTTERANCES[4:])
    args = ["--model", str(model_file), "--data_root", str(root), "--emb_root", str(tmp_path / "emb"),
            "--device", "cpu", *[x for o in CHEAP for x in ("--override", o)]]
    assert main(args + ["--sets", "t1", "t1_*"]) == 0
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == ["t1", "t1_noise_5"]
    assert len(kaldiio.load_scp(str(tmp_path / "emb" / "t1_noise_5" / "xvector.scp"))) == 2
    assert run_main(main, args + ["--sets", "nothing_*"]) == 2
    assert run_main(main, ["--model", str(model_file), "--data_dir", str(data_dir)]) == 2
