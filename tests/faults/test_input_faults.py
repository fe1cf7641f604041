"""Missing, corrupt, duplicated, non-UTF-8 or inconsistent inputs other than audio, stage by stage.

Each refusal is one ``ERROR:`` line naming the file, line or key and the fix (exit 2), with the stage's
existing outputs byte- and mtime-identical afterwards. A directory name that is not UTF-8 is refused up front
where a UTF-8 list must name it (stages 2, 3, 5) and works elsewhere (6, 7, 8 show it with escapes).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import yaml

from nawsv.bin.export import main as export_main
from nawsv.bin.extract import main as extract_main
from nawsv.bin.make_noisy_sets import main as noisy_main
from nawsv.bin.prepare_data import main as prepare_main
from nawsv.bin.report import main as report_main
from nawsv.bin.score import main as score_main
from nawsv.bin.train import main as train_main
from tests.faults.conftest import NON_UTF8, assert_user_error, cli, extract_args, noisy_args, snapshot
from tests.test_extract import write_data_dir
from tests.test_score_stage import TEST_SET, make_experiment, score_args

STAGE1 = ["--override", "nj=1", "--override", "shards=false"]


# ---- stage 1 ----

@pytest.fixture
def tree(tiny_corpus: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_corpus["voxceleb"] / "test" / "wav", tmp_path / "wav"))


def test_stage1_duplicate_key_across_trees(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    copy = Path(shutil.copytree(tree, tmp_path / "copy"))
    line = assert_user_error(cli(prepare_main, ["speakers", "--wav_root", tree, "--wav_root", copy, "--out",
                                                tmp_path / "o", *STAGE1], capsys), "exists in two trees")
    assert str(tree) in line and str(copy) in line
    assert not (tmp_path / "o").exists()


def test_stage1_trial_with_unknown_key(tree: Path, tiny_corpus: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    trials = tmp_path / "veri_test.txt"
    known = tiny_corpus["trials"].read_text().split()[1]
    trials.write_text(tiny_corpus["trials"].read_text() + f"1 {known} id99999/abc/00001.wav\n")
    number = len(trials.read_text().splitlines())
    assert_user_error(cli(prepare_main, ["speakers", "--wav_root", tree, "--out", tmp_path / "o", *STAGE1,
                                         "--trials", f"O={trials}"], capsys),
                      f"{trials}:{number}", "'id99999/abc/00001.wav'", "not in the test set")
    assert not (tmp_path / "o").exists()


def test_stage1_empty_trial_list(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trials = tmp_path / "empty.txt"
    trials.write_text("")
    assert_user_error(cli(prepare_main, ["speakers", "--wav_root", tree, "--out", tmp_path / "o", *STAGE1,
                                         "--trials", f"O={trials}"], capsys), str(trials), "is empty")


def test_stage1_non_utf8_trial_list(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trials = tmp_path / "latin1.txt"
    trials.write_bytes(b"1 caf\xe9 x\n")
    assert_user_error(cli(prepare_main, ["speakers", "--wav_root", tree, "--out", tmp_path / "o", *STAGE1,
                                         "--trials", f"O={trials}"], capsys), str(trials), "not UTF-8")


# ---- stage 2 ----

@pytest.fixture
def clean_set(train_data: dict, tmp_path: Path) -> Path:
    return Path(shutil.copytree(train_data["test"], tmp_path / "data" / "tiny_test"))


def test_stage2_missing_inputs(train_data: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_such_set"
    assert_user_error(cli(noisy_main, noisy_args(train_data, missing, tmp_path / "out"), capsys), str(missing),
                      "run stage 1")
    argv = noisy_args(train_data, train_data["test"], tmp_path / "out")
    argv[argv.index("--musan") + 1] = tmp_path / "no_bank"
    assert_user_error(cli(noisy_main, argv, capsys), "no_bank", "does not exist")
    assert not (tmp_path / "out").exists()


def test_stage2_duplicate_key(train_data: dict, clean_set: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    lines = (clean_set / "wav.scp").read_text().splitlines()
    (clean_set / "wav.scp").write_text("\n".join(lines + [lines[0]]) + "\n")
    key = lines[0].split()[0]
    assert_user_error(cli(noisy_main, noisy_args(train_data, clean_set, tmp_path / "out"), capsys),
                      f"wav.scp:{len(lines) + 1}", f"duplicate key {key!r}", "first seen on line 1")
    assert not (tmp_path / "out").exists()


def test_stage2_non_utf8(train_data: dict, clean_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / NON_UTF8
    assert_user_error(cli(noisy_main, noisy_args(train_data, clean_set, out), capsys), "caf\\xe9", "--out_root",
                      "not valid UTF-8")
    assert not out.exists()
    (clean_set / "utt2spk").write_bytes((clean_set / "utt2spk").read_bytes() + b"caf\xe9 x\n")
    assert_user_error(cli(noisy_main, noisy_args(train_data, clean_set, tmp_path / "o"), capsys),
                      str(clean_set / "utt2spk"), "not UTF-8")


# ---- stages 3 and 4 ----

def train_argv(task: str, tiny_configs: dict, data: Path, exp: Path) -> list:
    argv = [task, "--config", tiny_configs[task], "--train_data", data, "--exp_dir", exp, "--device", "cpu"]
    return argv + (["--init", "none"] if task == "finetune" else [])


@pytest.mark.parametrize("task", ["warmup", "finetune"])
def test_stages3_4_missing_duplicated_or_non_utf8_training_list(task: str, train_data: dict, tiny_configs: dict,
                                                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "list"
    data.mkdir()
    argv = train_argv(task, tiny_configs, data, tmp_path / "exp")
    assert_user_error(cli(train_main, argv, capsys), str(data / "raw.list"), "run stage 1")
    lines = (train_data["dev"] / "raw.list").read_text().splitlines()
    (data / "raw.list").write_text("\n".join(lines + [lines[3]]) + "\n")
    assert_user_error(cli(train_main, argv, capsys), f"raw.list:{len(lines) + 1}", "duplicate key")
    (data / "raw.list").write_bytes(b'{"key": "caf\xe9"}\n')
    assert_user_error(cli(train_main, argv, capsys), str(data / "raw.list"), "not UTF-8")
    assert not (tmp_path / "exp" / "checkpoints").exists()


@pytest.mark.parametrize("task", ["warmup", "finetune"])
def test_stages3_4_non_utf8_experiment_dir(task: str, train_data: dict, tiny_configs: dict, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    exp = tmp_path / NON_UTF8
    assert_user_error(cli(train_main, train_argv(task, tiny_configs, train_data["dev"], exp), capsys), "caf\\xe9",
                      "--exp_dir", "not valid UTF-8")
    assert not exp.exists()


def test_stage4_missing_or_corrupt_warmup_student(train_data: dict, tiny_configs: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    student = tmp_path / "warmup" / "student.pt"
    argv = ["finetune", "--config", tiny_configs["finetune"], "--train_data", train_data["dev"], "--musan",
            train_data["musan_train"], "--rirs", train_data["rirs"], "--init", student, "--exp_dir", tmp_path / "exp",
            "--device", "cpu"]
    assert_user_error(cli(train_main, argv, capsys), str(student), "does not exist", "stage (3)")
    assert not (tmp_path / "exp").exists()
    student.parent.mkdir()
    student.write_bytes(b"PK\x03\x04 truncated")
    assert_user_error(cli(train_main, argv, capsys), str(student), "cannot be read")
    assert not (tmp_path / "exp" / "checkpoints").exists()


# ---- stage 5 ----

def test_stage5_missing_or_corrupt_model(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_data_dir(tmp_path / "set", [("a/1", 1.0)])
    missing = tmp_path / "none.pt"
    assert_user_error(cli(extract_main, extract_args(missing, data, tmp_path / "emb"), capsys), str(missing),
                      "stage (4)")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_model.read_bytes()[:5000])
    assert_user_error(cli(extract_main, extract_args(truncated, data, tmp_path / "emb"), capsys), str(truncated),
                      "cannot be read", "rerun stage 4")
    assert not (tmp_path / "emb" / "xvector.scp").exists()


def test_stage5_missing_data_dir_and_duplicate_key(tiny_model: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_set"
    assert_user_error(cli(extract_main, extract_args(tiny_model, missing, tmp_path / "emb"), capsys), str(missing))
    data = write_data_dir(tmp_path / "set", [("a/1", 1.0), ("b/2", 1.0)])
    scp = data / "wav.scp"
    scp.write_text(scp.read_text() + scp.read_text().splitlines()[1] + "\n")
    assert_user_error(cli(extract_main, extract_args(tiny_model, data, tmp_path / "emb"), capsys),
                      f"{scp}:3", "duplicate key 'b/2'")
    assert not (tmp_path / "emb").exists()


def test_stage5_non_utf8_output_dir(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_data_dir(tmp_path / "set", [("a/1", 1.0)])
    out = tmp_path / NON_UTF8
    assert_user_error(cli(extract_main, extract_args(tiny_model, data, out), capsys), "caf\\xe9", "--out_dir",
                      "not valid UTF-8")
    assert not out.exists()


# ---- stage 6 ----

def scored_experiment(root: Path, capsys: pytest.CaptureFixture) -> tuple[Path, Path, dict]:
    """A scored synthetic experiment and the snapshot of stage 6's outputs."""
    exp, data = make_experiment(root)
    assert cli(score_main, score_args(exp, data), capsys).rc == 0
    return exp, data, stage6_outputs(exp)


def stage6_outputs(exp: Path) -> dict:
    return {name: value for name, value in snapshot(exp).items() if not name.startswith("embeddings/")}


def test_stage6_missing_scp_or_ark(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp, data, before = scored_experiment(tmp_path, capsys)
    noisy = exp / "embeddings" / f"{TEST_SET}_music_0"
    (noisy / "xvector.ark").unlink()
    assert_user_error(cli(score_main, score_args(exp, data), capsys), str(noisy / "xvector.ark"), "does not exist",
                      "rerun stage 5")
    (noisy / "xvector.scp").unlink()
    assert_user_error(cli(score_main, score_args(exp, data), capsys), str(noisy / "xvector.scp"), "run stage 5")
    assert stage6_outputs(exp) == before


def test_stage6_truncated_ark(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp, data, before = scored_experiment(tmp_path, capsys)
    ark = exp / "embeddings" / f"{TEST_SET}_noise_0" / "xvector_seg.ark"
    ark.write_bytes(ark.read_bytes()[: ark.stat().st_size // 2])
    assert_user_error(cli(score_main, score_args(exp, data), capsys), str(ark), "truncated", "rerun stage 5")
    assert stage6_outputs(exp) == before


def test_stage6_nan_embedding(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp, data, before = scored_experiment(tmp_path, capsys)
    set_dir = exp / "embeddings" / f"{TEST_SET}_noise_0"
    vectors = dict(kaldiio.load_scp(str(set_dir / "xvector.scp")))
    key = sorted(vectors)[4]
    vectors[key] = np.full_like(vectors[key], np.nan)
    with kaldiio.WriteHelper(f"ark,scp:{set_dir / 'xvector.ark'},{set_dir / 'xvector.scp'}") as writer:
        for name in sorted(vectors):
            writer(name, vectors[name])
    assert_user_error(cli(score_main, score_args(exp, data), capsys), repr(key), "NaN/inf")
    assert stage6_outputs(exp) == before


def test_stage6_duplicate_key_in_scp(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp, data, before = scored_experiment(tmp_path, capsys)
    scp = exp / "embeddings" / TEST_SET / "xvector.scp"
    lines = scp.read_text().splitlines()
    scp.write_text("\n".join(lines + [lines[2]]) + "\n")
    assert_user_error(cli(score_main, score_args(exp, data), capsys), f"{scp}:{len(lines) + 1}", "duplicate key")
    assert stage6_outputs(exp) == before


def test_stage6_trial_with_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp, data, before = scored_experiment(tmp_path, capsys)
    trials = data / TEST_SET / "trials" / "tiny_O"
    first = trials.read_text().split()[0]
    trials.write_text(trials.read_text() + f"{first} id99999/typo/00001.wav target\n")
    assert_user_error(cli(score_main, score_args(exp, data), capsys), str(trials), "'id99999/typo/00001.wav'")
    assert stage6_outputs(exp) == before


def test_stage6_empty_or_non_utf8_trial_list(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp, data, before = scored_experiment(tmp_path, capsys)
    trials = data / TEST_SET / "trials" / "tiny_O"
    trials.write_text("")
    assert_user_error(cli(score_main, score_args(exp, data), capsys), str(trials), "is empty")
    trials.write_bytes(b"caf\xe9 x target\n")
    assert_user_error(cli(score_main, score_args(exp, data), capsys), str(trials), "not UTF-8")
    assert stage6_outputs(exp) == before


def test_stage6_and_7_work_in_a_non_utf8_experiment_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp, data = make_experiment(tmp_path)
    moved = tmp_path / NON_UTF8
    moved.mkdir()
    (moved / "embeddings").symlink_to(exp / "embeddings")      # the scps keep naming arks under a UTF-8 path
    assert cli(score_main, score_args(moved, data), capsys).rc == 0
    assert "caf\\xe9" in (moved / "results.md").read_text(encoding="utf-8")
    assert cli(report_main, ["--exp_dir", moved], capsys).rc == 0
    assert "caf\\xe9" in (moved / "report" / "report.md").read_text(encoding="utf-8")


# ---- stage 7 ----

def test_stage7_missing_or_corrupt_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    exp, data, _ = scored_experiment(tmp_path, capsys)
    assert cli(report_main, ["--exp_dir", exp], capsys).rc == 0
    before = snapshot(exp / "report")
    results = exp / "results.tsv"
    text = results.read_text()
    results.write_text(text.replace("\t", " ", 3))
    assert_user_error(cli(report_main, ["--exp_dir", exp], capsys), str(results), "rerun stage 6")
    lines = text.splitlines()
    results.write_text("\n".join(lines[:2] + [lines[2].rsplit("\t", 1)[0] + "\tnot-a-number"]) + "\n")
    assert_user_error(cli(report_main, ["--exp_dir", exp], capsys), f"{results}:3", "malformed number")
    results.write_bytes(b"caf\xe9\n")
    assert_user_error(cli(report_main, ["--exp_dir", exp], capsys), str(results), "not UTF-8")
    results.unlink()
    assert_user_error(cli(report_main, ["--exp_dir", exp], capsys), str(results), "run stage 6")
    assert snapshot(exp / "report") == before


# ---- stage 8 ----

def test_stage8_missing_or_corrupt_model(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "export"
    missing = tmp_path / "none.pt"
    assert_user_error(cli(export_main, ["--model", missing, "--out_dir", out], capsys), str(missing), "stage (4)")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_model.read_bytes()[:5000])
    assert_user_error(cli(export_main, ["--model", truncated, "--out_dir", out], capsys), str(truncated),
                      "cannot be read")
    assert not out.exists()


def test_stage8_model_under_a_non_utf8_name(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / f"{NON_UTF8}.pt"
    shutil.copy(tiny_model, model)
    assert cli(export_main, ["--model", model, "--out_dir", tmp_path / "export"], capsys).rc == 0
    config = yaml.safe_load((tmp_path / "export" / "config.yaml").read_text(encoding="utf-8"))
    assert config["model"]["source"] == str(model)


def test_stage8_package_with_a_truncated_torchscript_is_refused_by_its_users(tiny_model: Path, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture) -> None:
    from nawsv.cli import main as nawsv_main
    from tests.faults.conftest import write_bad_audio

    export = tmp_path / "export"
    assert cli(export_main, ["--model", tiny_model, "--out_dir", export], capsys).rc == 0
    script = export / "model.ts"
    script.write_bytes(script.read_bytes()[:2000])
    wav = write_bad_audio(tmp_path / "a.wav", "stereo")
    capsys.readouterr()
    assert nawsv_main(["verify", str(export), str(wav), str(wav)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"ERROR: TorchScript model {script}")
    assert "rerun stage 8" in err
