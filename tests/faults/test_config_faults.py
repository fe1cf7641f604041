"""Config and option faults, every stage: malformed YAML, an unknown key, an out-of-range value or option.

Each is refused with one ``ERROR:`` line naming the file/key/option (exit 2), before anything is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from nawsv.bin.export import main as export_main
from nawsv.bin.extract import main as extract_main
from nawsv.bin.make_mini_corpus import main as corpus_main
from nawsv.bin.make_noisy_sets import main as noisy_main
from nawsv.bin.prepare_data import main as prepare_main
from nawsv.bin.report import main as report_main
from nawsv.bin.score import main as score_main
from nawsv.bin.train import main as train_main
from tests.faults.conftest import assert_user_error, cli

# stage -> (entry point, arguments before --config, a config value out of range, the key the error must name)
STAGES: dict[str, tuple[Callable, Callable[[Path], list], str, str]] = {
    "1-prepare": (prepare_main, lambda t: ["speakers", "--wav_root", t / "corpus", "--out", t / "out"],
                  "nj=0", "nj"),
    "2-noisy": (noisy_main, lambda t: ["--data", t / "data", "--out_root", t / "out"], "chunk_size=0", "chunk_size"),
    "3-warmup": (train_main, lambda t: ["warmup", "--train_data", t / "data", "--exp_dir", t / "out"],
                 "epochs=-1", "epochs"),
    "4-finetune": (train_main, lambda t: ["finetune", "--train_data", t / "data", "--init", "none", "--exp_dir",
                                          t / "out"], "average_last=0", "average_last"),
    "5-extract": (extract_main, lambda t: ["--model", t / "m.pt", "--data_dir", t / "data", "--out_dir", t / "out"],
                  "segments.num=0", "segments.num"),
    "6-score": (score_main, lambda t: ["--exp_dir", t / "out", "--data_dir", t / "data", "--test_set", "x"],
                "asnorm_top_n=1", "asnorm_top_n"),
    "7-report": (report_main, lambda t: ["--exp_dir", t / "out"], "dpi=10", "dpi"),
    "8-export": (export_main, lambda t: ["--model", t / "m.pt", "--out_dir", t / "out"], "segments.num=0",
                 "segments.num"),
    "corpus": (corpus_main, lambda t: ["--out", t / "out"], "dev_speakers=0", "dev_speakers"),
}


@pytest.mark.parametrize("stage", STAGES)
def test_malformed_yaml(stage: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main, args, _, _ = STAGES[stage]
    config = tmp_path / "broken.yaml"
    config.write_text("seed: 1\nlist: [1, 2\nother: 3\n")
    line = assert_user_error(cli(main, [*args(tmp_path), "--config", config], capsys), str(config), "not valid YAML")
    assert "line 3" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stage", STAGES)
def test_unknown_config_key(stage: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main, args, _, _ = STAGES[stage]
    config = tmp_path / "typo.yaml"
    config.write_text("no_such_key: 1\n")
    assert_user_error(cli(main, [*args(tmp_path), "--config", config], capsys), "'no_such_key'", str(config),
                      "valid keys:")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stage", STAGES)
def test_out_of_range_config_value(stage: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main, args, override, key = STAGES[stage]
    assert_user_error(cli(main, [*args(tmp_path), "--override", override], capsys), key)
    assert not (tmp_path / "out").exists()


def test_non_utf8_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes(b"seed: 1 # caf\xe9\n")
    assert_user_error(cli(noisy_main, ["--data", tmp_path, "--out_root", tmp_path / "out", "--config", config],
                          capsys), str(config), "cannot be read")


# stage -> (entry point, argv with an out-of-range command-line option, what the error must name)
OPTIONS: dict[str, tuple[Callable, Callable[[Path], list], str]] = {
    "1-convert-num_jobs-0": (prepare_main, lambda t: ["convert", "--src_root", t, "--dst_root", t / "out",
                                                      "--num_jobs", "0"], "--num_jobs"),
    "2-nj-0": (noisy_main, lambda t: ["--data", t / "data", "--out_root", t / "out", "--nj", "0"], "--nj"),
    "2-job-5-of-2": (noisy_main, lambda t: ["--data", t / "data", "--out_root", t / "out", "--job", "5",
                                            "--num_jobs", "2"], "--job 5 --num_jobs 2"),
    "3-device-tpu": (train_main, lambda t: ["warmup", "--train_data", t, "--exp_dir", t / "out", "--device", "tpu"],
                     "--device"),
    "4-no-init": (train_main, lambda t: ["finetune", "--train_data", t, "--exp_dir", t / "out"], "--init"),
    "5-job-5-of-2": (extract_main, lambda t: ["--model", t / "m.pt", "--data_dir", t, "--out_dir", t / "out",
                                              "--job", "5", "--num_jobs", "2"], "--job 5 --num_jobs 2"),
    "5-num_threads-0": (extract_main, lambda t: ["--model", t / "m.pt", "--data_dir", t, "--out_dir", t / "out",
                                                 "--num_threads", "0"], "--num_threads"),
    "6-no-test_set": (score_main, lambda t: ["--exp_dir", t / "out", "--data_dir", t], "--test_set"),
    "8-format": (export_main, lambda t: ["--model", t / "m.pt", "--out_dir", t / "out", "--format", "tflite"],
                 "--format"),
}


@pytest.mark.parametrize("case", OPTIONS)
def test_out_of_range_option(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main, argv, needle = OPTIONS[case]
    assert_user_error(cli(main, argv(tmp_path), capsys), needle)
    assert not (tmp_path / "out").exists()
