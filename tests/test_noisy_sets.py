"""Stage 2: noisy test sets are exact, deterministic under any job split, resumable, and readable on the fly."""
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nawsv.bin.make_noisy_sets import main as noisy_main
from nawsv.data.audio import write_audio
from nawsv.formats.kaldi import read_table
from nawsv.data.noisy_sets import NoisySetConfig, make_noisy_sets, read_manifest
from nawsv.data.prepare import PrepareConfig, prepare_speaker_set
from nawsv.data.sources import ManifestSource, WavScpSource, open_audio_source
from nawsv.utils.config import load_config
from nawsv.utils.errors import ConfigError, DataError, ExperimentError
from tests.conftest import run_module
from tests.test_augment import build_banks, file_window

CFG = NoisySetConfig(seed=5, snrs=[0.0, 10.0], chunk_size=4)
FULL_SCALE = 32767 / 32768


@pytest.fixture(scope="module")
def inputs(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("noisy_inputs")
    paths = build_banks(tiny_corpus, root)
    paths["test"] = root / "data" / "tiny_test"
    prepare_speaker_set(tiny_corpus["voxceleb"] / "test" / "wav", paths["test"], PrepareConfig(nj=1, shards=False),
                        [("tiny_O", tiny_corpus["trials"])])
    return paths


def banks_of(inputs: dict[str, Path]) -> dict[str, Path]:
    return {"musan": inputs["musan_test"], "nonspeech": inputs["nonspeech"]}


@pytest.fixture(scope="module")
def reference(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 8 conditions materialised in one process (the output the other runs must reproduce)."""
    out = tmp_path_factory.mktemp("reference")
    make_noisy_sets(inputs["test"], out, CFG, **banks_of(inputs), nj=1)
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (wav.scp with the root replaced, as it holds absolute paths)."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "wav.scp":
            data = data.replace(str(root).encode(), b"<root>")
        files[str(path.relative_to(root))] = data
    return files


def cli_args(inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--data", str(inputs["test"]), "--out_root", str(out), "--musan", str(inputs["musan_test"]),
            "--nonspeech", str(inputs["nonspeech"]), "--override", "seed=5", "--override", "snrs=[0, 10]",
            "--override", "chunk_size=4", *extra]


def test_conditions_are_exact(inputs: dict[str, Path], reference: Path) -> None:
    clean = read_table(inputs["test"] / "wav.scp")
    test_cats = read_table(inputs["musan_test"] / "utt2cat")
    train_keys = set(read_table(inputs["musan_train"] / "wav.scp"))
    nonspeech = read_table(inputs["nonspeech"] / "wav.scp")
    noise_paths = {**read_table(inputs["musan_test"] / "wav.scp"), **nonspeech}
    dirs = sorted(p.name for p in reference.iterdir())
    assert dirs == sorted(f"tiny_test_{c}_{s}" for c in ("noise", "music", "babble", "nonspeech") for s in (0, 10))
    talkers = set()
    for name in dirs:
        directory = reference / name
        category, snr = name.split("_")[-2], float(name.split("_")[-1])
        rows = read_manifest(directory / "manifest.tsv")
        assert [r.utt for r in rows] == sorted(clean)
        wav_scp = read_table(directory / "wav.scp")
        assert list(wav_scp) == sorted(clean)
        for name_ in ("utt2spk", "spk2utt", "utt2dur", "trials/tiny_O"):
            assert (directory / name_).read_bytes() == (inputs["test"] / name_).read_bytes()
        for row in rows:
            assert row.category == category and row.snr_db == snr and row.clean_path == clean[row.utt]
            assert Path(wav_scp[row.utt]).parent.is_relative_to(directory)
            pcm, rate = sf.read(wav_scp[row.utt], dtype="int16")
            speech, _ = sf.read(clean[row.utt], dtype="float64")
            assert rate == 16000 and pcm.size == speech.size
            mixture = pcm / 32768.0 / row.peak_scale
            noise = mixture - speech
            assert abs(10 * np.log10(np.sum(speech ** 2) / np.sum(noise ** 2)) - snr) < 0.05
            windows = [file_window(noise_paths[k], o, speech.size) for k, o in zip(row.noise_keys, row.offsets)]
            rebuilt = speech + row.gain * np.mean(np.stack(windows).astype(np.float64), axis=0)
            assert np.max(np.abs(mixture - rebuilt)) <= 0.5 / 32768 / row.peak_scale + 1e-7
            assert row.clipped_samples == np.count_nonzero(np.abs(rebuilt) > FULL_SCALE + 1e-7)
            if category == "nonspeech":
                assert set(row.noise_keys) <= set(nonspeech)
            else:
                assert not set(row.noise_keys) & train_keys                    # test half only
                expected = {"babble": "speech"}.get(category, category)
                assert {test_cats[k] for k in row.noise_keys} == {expected}
            if category == "babble":
                assert 3 <= len(row.noise_keys) <= 6 and len(set(row.noise_keys)) == len(row.noise_keys)
                talkers.add(len(row.noise_keys))
            else:
                assert len(row.noise_keys) == 1
    assert len(talkers) >= 2


def test_clipping_is_peak_normalised(inputs: dict[str, Path], tmp_path: Path) -> None:
    loud_dir = tmp_path / "loud"
    shutil.copytree(inputs["test"], loud_dir)
    clean = read_table(loud_dir / "wav.scp")
    utt = sorted(clean)[0]
    speech, _ = sf.read(clean[utt], dtype="float32")
    write_audio(tmp_path / "loud.wav", (speech / np.max(np.abs(speech)) * 0.98).astype(np.float32))
    clean[utt] = str(tmp_path / "loud.wav")
    (loud_dir / "wav.scp").write_text("".join(f"{k} {v}\n" for k, v in sorted(clean.items())))
    cfg = NoisySetConfig(seed=5, categories=["noise"], snrs=[0.0], chunk_size=4)
    (directory,) = make_noisy_sets(loud_dir, tmp_path / "out", cfg, musan=inputs["musan_test"])
    row = next(r for r in read_manifest(directory / "manifest.tsv") if r.utt == utt)
    pcm, _ = sf.read(read_table(directory / "wav.scp")[utt], dtype="int16")
    loud, _ = sf.read(clean[utt], dtype="float64")
    window = file_window(read_table(inputs["musan_test"] / "wav.scp")[row.noise_keys[0]], row.offsets[0], loud.size)
    unclipped = loud + row.gain * window
    assert row.clipped_samples == np.count_nonzero(np.abs(unclipped) > FULL_SCALE) > 0
    assert abs(row.peak_scale - FULL_SCALE / np.max(np.abs(unclipped))) < 1e-6     # mixture held in float32
    assert np.max(np.abs(pcm.astype(np.int32))) == 32767


def test_any_job_split_gives_the_same_bytes(inputs: dict[str, Path], reference: Path, tmp_path: Path) -> None:
    expected = snapshot(reference)
    assert noisy_main(cli_args(inputs, tmp_path / "nj2", "--nj", "2", "--override", "chunk_size=3")) == 0
    assert snapshot(tmp_path / "nj2") == expected
    split = tmp_path / "split"
    for job in (2, 0):
        assert noisy_main(cli_args(inputs, split, "--job", str(job), "--num_jobs", "3")) == 0
    manifest = split / "tiny_test_babble_0" / "manifest.tsv"
    assert not manifest.exists() and (split / "tiny_test_babble_0" / "parts").is_dir()
    proc = run_module("nawsv.bin.make_noisy_sets", *cli_args(inputs, split, "--job", "1", "--num_jobs", "3"))
    assert proc.returncode == 0, proc.stderr
    assert snapshot(split) == expected                        # merged by the last job; no parts left behind


def test_a_one_chunk_set_keeps_every_job_busy(inputs: dict[str, Path], reference: Path, tmp_path: Path) -> None:
    """9 utterances in one chunk, 8 conditions, 4 jobs: the (condition, chunk) pairs are dealt round-robin, so
    job j makes conditions j and j + 4 (by the config's order: categories, then SNRs) and merges them."""
    cfg = dataclasses.replace(CFG, chunk_size=100)
    order = [f"tiny_test_{c}_{s}" for c in ("noise", "music", "babble", "nonspeech") for s in (0, 10)]
    out = tmp_path / "split"
    expected: set[str] = set()
    for job in (2, 0, 3, 1):
        make_noisy_sets(inputs["test"], out, cfg, **banks_of(inputs), job=job, num_jobs=4)
        expected |= {order[job], order[job + 4]}
        assert {p.parent.name for p in out.glob("*/manifest.tsv")} == expected
        assert not list(out.glob("*/parts/*.tsv"))                # each job finished (and merged) its conditions
    assert snapshot(out) == snapshot(reference)


def test_on_the_fly_equals_materialised(inputs: dict[str, Path], reference: Path, tmp_path: Path) -> None:
    dirs = make_noisy_sets(inputs["test"], tmp_path / "lazy", CFG, **banks_of(inputs), materialize=False, nj=2)
    flac = make_noisy_sets(inputs["test"], tmp_path / "flac", CFG, **banks_of(inputs), audio_format="flac")
    for lazy, compressed in zip(dirs, flac):
        materialised = reference / lazy.name
        assert not (lazy / "wav.scp").exists() and not (lazy / "audio").exists()
        assert (lazy / "manifest.tsv").read_bytes() == (materialised / "manifest.tsv").read_bytes()
        on_the_fly, from_files = open_audio_source(lazy), open_audio_source(materialised)
        from_flac = open_audio_source(compressed)
        assert isinstance(on_the_fly, ManifestSource) and isinstance(from_files, WavScpSource)
        assert on_the_fly.keys() == from_files.keys() == from_flac.keys()
        for key in on_the_fly.keys():
            samples = on_the_fly.load(key)
            assert samples.dtype == np.float32
            np.testing.assert_array_equal(samples, from_files.load(key))
            np.testing.assert_array_equal(samples, from_flac.load(key))
    clean = open_audio_source(inputs["test"])
    key = clean.keys()[0]
    np.testing.assert_array_equal(clean.load(key), sf.read(read_table(inputs["test"] / "wav.scp")[key],
                                                           dtype="float32")[0])


def test_rerun_completes_killed_runs(inputs: dict[str, Path], reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out, symlinks=True)
    for wav_scp in out.rglob("wav.scp"):
        wav_scp.write_text(wav_scp.read_text().replace(str(reference), str(out)))
    expected = snapshot(reference)
    assert snapshot(out) == expected
    untouched = out / "tiny_test_music_10" / "manifest.tsv"
    stamp = untouched.stat().st_mtime_ns
    (out / "tiny_test_noise_0" / "manifest.tsv").unlink()                      # killed before the merge
    (out / "tiny_test_babble_10" / "manifest.tsv").unlink()
    (out / "tiny_test_babble_10" / "wav.scp").unlink()
    next((out / "tiny_test_babble_10" / "audio").rglob("*.wav")).unlink()       # and before some audio
    partial = tmp_path / "partial"                                              # a split run with one job missing
    make_noisy_sets(inputs["test"], partial, CFG, **banks_of(inputs), job=1, num_jobs=2)
    assert not any(partial.rglob("manifest.tsv"))
    with pytest.raises(DataError) as failed:
        make_noisy_sets(inputs["test"], partial, CFG, **banks_of(inputs), num_jobs=2, merge_only=True)
    conditions = sorted(p.name for p in partial.iterdir() if p.is_dir())
    assert len(conditions) > 1 and all(f"{partial / c}: chunk" in str(failed.value) for c in conditions)   # all at once
    assert "they belong to job 0 of 2 (array index 0)" in str(failed.value)
    make_noisy_sets(inputs["test"], out, CFG, **banks_of(inputs), nj=2)
    make_noisy_sets(inputs["test"], partial, CFG, **banks_of(inputs))
    assert snapshot(out) == expected == snapshot(partial)
    assert untouched.stat().st_mtime_ns == stamp                                # finished conditions are skipped


def test_changed_definition_is_refused(inputs: dict[str, Path], reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = NoisySetConfig(seed=5, categories=["music"], snrs=[10.0], chunk_size=4)
    (directory,) = make_noisy_sets(inputs["test"], out, cfg, musan=inputs["musan_test"], materialize=False)
    before = snapshot(out)
    with pytest.raises(ExperimentError, match="seed: 5 -> 6"):
        make_noisy_sets(inputs["test"], out, NoisySetConfig(seed=6, categories=["music"], snrs=[10.0]),
                        musan=inputs["musan_test"])
    assert snapshot(out) == before
    (directory / "manifest.tsv").unlink()
    with pytest.raises(DataError, match="unfinished stage-2 condition"):
        open_audio_source(directory)


def test_bad_inputs(inputs: dict[str, Path], tmp_path: Path) -> None:
    banks = banks_of(inputs)
    with pytest.raises(DataError, match="does not exist"):
        make_noisy_sets(tmp_path / "missing", tmp_path / "out", CFG, **banks)
    with pytest.raises(DataError, match="noise bank .* does not exist"):
        make_noisy_sets(inputs["test"], tmp_path / "out", CFG, musan=tmp_path / "nope", nonspeech=banks["nonspeech"])
    with pytest.raises(DataError, match="no files of category 'noise'"):
        make_noisy_sets(inputs["test"], tmp_path / "out", CFG, musan=inputs["nonspeech"], nonspeech=inputs["nonspeech"])
    with pytest.raises(ConfigError, match=r"\['nonspeech'\] need --nonspeech"):
        make_noisy_sets(inputs["test"], tmp_path / "out", CFG, musan=banks["musan"])
    with pytest.raises(ConfigError, match="unknown noise categor"):
        load_config(NoisySetConfig, None, ["categories=[noise, wind]"])
    with pytest.raises(ConfigError, match="0 <= job < num_jobs"):
        make_noisy_sets(inputs["test"], tmp_path / "out", CFG, **banks, job=3, num_jobs=3)
    with pytest.raises(DataError, match="at least 10 distinct talkers"):
        make_noisy_sets(inputs["test"], tmp_path / "out", NoisySetConfig(categories=["babble"],
                                                                         babble_talkers=(10, 12)), musan=banks["musan"])
    assert not (tmp_path / "out").exists()
    proc = run_module("nawsv.bin.make_noisy_sets", "--data", str(inputs["test"]), "--out_root", str(tmp_path / "o"),
                      "--override", "categories=[wind]")
    assert proc.returncode == 2 and proc.stderr.startswith("ERROR:") and "wind" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corpus_and_data_paths_with_spaces_go_through_stages_1_and_2(tiny_corpus: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """wav.scp is read as Kaldi reads it (key, then the rest of the line) by every reader: the clean set, the
    noise bank and the materialised noisy set all name files under folders with spaces, and the noisy audio
    read through its wav.scp equals the same mix made on the fly from the manifest."""
    from nawsv.formats.kaldi import read_kaldi_dir, read_wav_scp
    from nawsv.data.noise_bank import NoiseBank
    from nawsv.data.prepare import prepare_musan

    corpora = tmp_path / "my corpora"
    shutil.copytree(tiny_corpus["voxceleb"] / "test" / "wav", corpora / "vox 1" / "wav")
    shutil.copytree(tiny_corpus["musan"], corpora / "mu san")
    data = tmp_path / "data dir"
    cfg = PrepareConfig(nj=1, shards=False)
    prepare_speaker_set(corpora / "vox 1" / "wav", data / "test", cfg)                            # stage 1
    prepare_musan(corpora / "mu san", data, cfg)
    clean = read_kaldi_dir(data / "test")
    assert clean.wav_scp and all(" " in path and Path(path).is_file() for path in clean.wav_scp.values())
    bank = NoiseBank.from_dir(data / "musan_test")
    assert all(" " in path for path in read_wav_scp(data / "musan_test" / "wav.scp").values())
    noise = dataclasses.replace(CFG, categories=["noise"], snrs=[5.0])
    (materialised,) = make_noisy_sets(data / "test", data, noise, musan=bank.root)               # stage 2
    (mixed,) = make_noisy_sets(data / "test", tmp_path / "manifest only", noise, musan=bank.root, materialize=False)
    paths = read_wav_scp(materialised / "wav.scp")
    assert list(paths) == sorted(clean.wav_scp) and all(str(data) in p and Path(p).is_file() for p in paths.values())
    on_disk, on_the_fly = WavScpSource(materialised), ManifestSource(mixed)
    for key in paths:
        np.testing.assert_array_equal(on_disk.load(key), on_the_fly.load(key))


def test_a_rerun_removes_temporaries_left_by_a_sigkill(inputs: dict[str, Path], reference: Path,
                                                        tmp_path: Path) -> None:
    """A task killed by SIGKILL (scancel after KillWait, a lost node) leaves hidden temporaries; the rerun of the
    stage removes them, so the tree equals one process's again."""
    import re
    import subprocess

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    gone = subprocess.Popen(["true"])
    gone.wait()
    condition = sorted(p for p in out.iterdir() if p.is_dir())[0]
    probe = out / "probe.txt"
    from nawsv.utils.atomic import atomic_open
    with atomic_open(probe) as handle:                      # this machine's name, as the writer spells it
        handle.write("x")
        host = re.search(r"\.probe\.txt\.([A-Za-z0-9_-]+)\+", next(out.glob(".probe.txt.*")).name).group(1)
    probe.unlink()
    stale = [condition / f".manifest.tsv.{host}+{gone.pid}.k1ll3d00.tmp",
             condition / "audio" / f".u.wav.{host}+{gone.pid}.k1ll3d01.tmp"]
    for path in stale:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    make_noisy_sets(inputs["test"], out, CFG, **banks_of(inputs))
    assert not any(path.exists() for path in stale)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == sorted(p.relative_to(reference)
                                                                         for p in reference.rglob("*"))
