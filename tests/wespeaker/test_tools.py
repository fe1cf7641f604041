"""WeSpeaker's own tools on a bridge experiment (nawsv_ssl + NAWSV_ECAPA_TDNN), and nawsv's stages 5-7 on it.

The experiment is what WeSpeaker's train() leaves: ``config.yaml`` and ``models/model_<epoch>.pt`` written by
WeSpeaker's ``save_checkpoint`` from a model assembled as train.py assembles it. Through
``python -m nawsv.integrations.wespeaker.tools`` WeSpeaker's unmodified ``average_model.py`` averages it and its
``extract.py`` embeds the test set (CPU shim); the converter turns the average into nawsv's model, whose stage-5
embeddings must equal extract.py's to 1e-5: the same float32 weights on the same samples, where only the batch
shapes (one utterance per batch there, equal-length batches here) may change the order of sums (~1e-7 of the
embedding's scale). Stages 6 and 7 then score and report the experiment.
"""
from __future__ import annotations

from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from nawsv.integrations.wespeaker.convert import main as convert_main
from nawsv.integrations.wespeaker.registry import prepare_config, register
from nawsv.integrations.wespeaker.tools import main as tools_main
from nawsv.models.config import SSLConfig
from nawsv.models.ssl import build_student, save_encoder
from nawsv.utils.cli import run_main
from tests.conftest import run_module
from tests.wespeaker.weights import perturb

TOLERANCE = 1e-5
EPOCHS = (1, 2)


def bridge_config(student: Path, exp_dir: Path) -> dict:
    return {
        "exp_dir": str(exp_dir), "data_type": "raw", "num_avg": len(EPOCHS),
        "dataset_args": {"resample_rate": 16000, "frontend": "nawsv_ssl", "cmvn": False, "spec_aug": False,
                         "nawsv_ssl_args": {"init": str(student), "frozen": True, "frame_shift": 20,
                                            "frame_length": 20}},
        "model": "NAWSV_ECAPA_TDNN", "model_args": {"embed_dim": 16, "channels": 16},
        "projection_args": {"project_type": "nawsv_aam_intertopk", "num_class": 5, "embed_dim": 16,
                            "class_weights": False},
    }


@pytest.fixture(scope="module")
def bridge_exp(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """config.yaml + models/model_{1,2}.pt of a tiny bridge model, two different sets of weights."""
    register()                          # before WeSpeaker's lookups are imported: it wraps them
    from wespeaker.frontend import frontend_class_dict
    from wespeaker.models.projections import get_projection
    from wespeaker.models.speaker_model import get_speaker_model
    from wespeaker.utils.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("bridge")
    student = root / "student.pt"
    save_encoder(build_student(SSLConfig(preset="tiny", adapter_dim=8, init_seed=5)), student)
    exp = root / "exp"
    configs = prepare_config(bridge_config(student, exp))
    dataset_args = configs["dataset_args"]
    states = []
    for epoch in EPOCHS:
        frontend = frontend_class_dict["nawsv_ssl"](**dataset_args["nawsv_ssl_args"], sample_rate=16000)
        configs["model_args"]["feat_dim"] = frontend.output_size()
        model = get_speaker_model(configs["model"])(**configs["model_args"])
        model.add_module("frontend", frontend)
        model.add_module("projection", get_projection(configs["projection_args"]))
        perturb(model, seed=epoch)
        (exp / "models").mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, str(exp / "models" / f"model_{epoch}.pt"))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    (exp / "config.yaml").write_text(yaml.safe_dump(configs))
    return {"root": root, "exp": exp, "states": states}


def test_help_lists_the_tools() -> None:
    proc = run_module("nawsv.integrations.wespeaker.tools", "--help")
    assert proc.returncode == 0 and "extract" in proc.stdout and "average" in proc.stdout
    proc = run_module("nawsv.integrations.wespeaker.tools", "convert")
    assert proc.returncode == 2 and "unknown tool 'convert'" in proc.stderr


def test_average_is_wespeakers_mean_of_the_epochs(bridge_exp: dict) -> None:
    models = bridge_exp["exp"] / "models"
    assert run_main(tools_main, ["average", "--src_path", str(models), "--dst_model", str(models / "avg_model.pt"),
                                 "--num", str(len(EPOCHS))]) == 0
    average = torch.load(models / "avg_model.pt", map_location="cpu", weights_only=True)
    first, second = bridge_exp["states"]
    assert sorted(average) == sorted(first)
    for name, tensor in average.items():
        expected = (first[name].double() + second[name].double()) / 2
        assert torch.allclose(tensor.double(), expected, atol=1e-6), name


def test_wespeaker_extract_equals_nawsv_stage5_and_stages_6_7_run(bridge_exp: dict, train_data: dict) -> None:
    """extract.py (WeSpeaker's, registered, CPU shim) and stage 5 on the converted average: same keys and
    vectors to 1e-5; stage 6's cosine scores are the cosines of extract.py's vectors; stage 7 writes its report."""
    from nawsv.bin.extract import main as extract_main
    from nawsv.bin.report import main as report_main
    from nawsv.bin.score import main as score_main

    exp = bridge_exp["exp"]
    average = exp / "models" / "avg_model.pt"
    if not average.is_file():
        assert run_main(tools_main, ["average", "--src_path", str(exp / "models"), "--dst_model", str(average),
                                     "--num", str(len(EPOCHS))]) == 0
    ark = exp / "wespeaker_embeddings" / "test" / "xvector.ark"
    proc = run_module("nawsv.integrations.wespeaker.tools", "extract", "--device", "cpu",
                      "--config", str(exp / "config.yaml"), "--model_path", str(average), "--data_type", "raw",
                      "--data_list", str(train_data["test"] / "raw.list"), "--embed_ark", str(ark),
                      "--batch_size", "1", "--num_workers", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = dict(kaldiio.load_scp(str(ark.with_suffix(".scp"))))

    model = exp / "nawsv_avg_model.pt"
    assert convert_main(["to-nawsv", "--exp_dir", str(exp), "--out", str(model)]) == 0
    assert extract_main(["--model", str(model), "--data_dir", str(train_data["test"]),
                         "--out_dir", str(exp / "embeddings" / "test"), "--device", "cpu"]) == 0
    ours = dict(kaldiio.load_scp(str(exp / "embeddings" / "test" / "xvector.scp")))
    utterances = sorted(line.split()[0] for line in (train_data["test"] / "utt2spk").read_text().splitlines())
    assert sorted(theirs) == sorted(ours) == utterances
    difference = max(float(np.abs(theirs[k] - ours[k]).max()) for k in utterances)
    scale = max(float(np.abs(v).max()) for v in theirs.values())
    print(f"bridge: extract.py vs stage 5 ({len(utterances)} utterances): max |diff| {difference:.3g} "
          f"(embedding scale {scale:.3g})")
    assert difference <= TOLERANCE

    assert score_main(["--exp_dir", str(exp), "--data_dir", str(train_data["root"]), "--test_set", "test",
                       "--override", "methods=[cosine,segment,full]", "--override", "bootstrap.resamples=50"]) == 0
    lines = [line.split() for line in (exp / "scores" / "O_clean_cosine.score").read_text().splitlines()]
    assert lines
    for enrol, test, score, _ in lines:
        a, b = theirs[enrol].astype(np.float64), theirs[test].astype(np.float64)
        assert float(score) == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-5)
    assert report_main(["--exp_dir", str(exp)]) == 0
    assert (exp / "report" / "report.md").is_file()
