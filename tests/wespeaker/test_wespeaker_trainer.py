"""nawsv inside WeSpeaker's real trainer (run in .venv-wespeaker: bash tools/test.sh does it), on CPU.

Equality, not "it ran": on the same weights and the same WeSpeaker batch, the loss and every gradient through
WeSpeaker's ``run_epoch`` equal nawsv's own fine-tune step; the converted model embeds like the WeSpeaker model.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from nawsv.data.augment import AugmentConfig, Augmenter
from nawsv.data.store import UtteranceStore
from nawsv.integrations.wespeaker.convert import student_to_model_init, wespeaker_to_nawsv
from nawsv.integrations.wespeaker.local import build_model, init_single_process
from nawsv.integrations.wespeaker.registry import register
from nawsv.integrations.wespeaker.train import resolve
from nawsv.models.config import SSLConfig
from nawsv.models.ssl import build_student, save_encoder
from nawsv.train.distributed import DistContext
from nawsv.train.finetune import FinetuneConfig, FinetuneTask
from nawsv.utils.config import load_config
from tests.conftest import ROOT, run_module

TOLERANCE = 1e-5
log = logging.getLogger("nawsv.tests.wespeaker")


def wespeaker_config(data: Path, student: Path, exp_dir: Path, frozen: bool, **top) -> dict:
    """A WeSpeaker training config with nawsv's modules, small enough for CPU seconds."""
    return {
        "exp_dir": str(exp_dir), "gpus": "[0]", "num_avg": 2, "enable_amp": False, "seed": 42, "num_epochs": 2,
        "save_epoch_interval": 1, "log_batch_interval": 1, "data_type": "raw", "train_data": str(data / "raw.list"),
        "train_label": str(data / "utt2spk"), "model_init": None,
        "dataloader_args": {"batch_size": 8, "num_workers": 0, "pin_memory": False, "drop_last": True},
        "dataset_args": {"sample_num_per_epoch": 0, "shuffle": False, "filter": False, "resample_rate": 16000,
                         "speed_perturb": False, "num_frms": 40, "aug_prob": 0.0, "frontend": "nawsv_ssl",
                         "nawsv_ssl_args": {"init": str(student), "frozen": frozen, "seed": 5, "frame_shift": 20,
                                            "frame_length": 20, "mask_time_length": 2},
                         "cmvn": False, "spec_aug": False},
        "model": "NAWSV_ECAPA_TDNN", "model_args": {"embed_dim": 16, "channels": 16},
        "projection_args": {"project_type": "nawsv_aam_intertopk", "scale": 30.0, "topk": 5, "topk_margin": 0.1},
        "margin_scheduler": "MarginScheduler",
        "margin_update": {"initial_margin": 0.2, "final_margin": 0.2, "increase_start_epoch": 1,
                          "fix_start_epoch": 1, "update_margin": True, "increase_type": "exp"},
        "loss": "CrossEntropyLoss", "loss_args": {}, "optimizer": "Adam", "optimizer_args": {"weight_decay": 0.0},
        "scheduler": "NawsvHalfCosineLR",
        "scheduler_args": {"initial_lr": 1e-3, "final_lr": 1e-5, "total_epochs": 2, "epoch_offset": 0},
        **top,
    }


@pytest.fixture(scope="module")
def setup(train_data, tmp_path_factory: pytest.TempPathFactory) -> dict:
    register()
    init_single_process()
    root = tmp_path_factory.mktemp("wespeaker")
    student = root / "student.pt"
    save_encoder(build_student(SSLConfig(preset="tiny", adapter_dim=8, init_seed=5)), student)
    return {"root": root, "student": student, "dev": train_data["dev"], "test": train_data["test"]}


def write_config(path: Path, configs: dict) -> Path:
    path.write_text(yaml.safe_dump(configs))
    return path


def wespeaker_batch(configs: dict) -> tuple[dict, dict]:
    """The first batch WeSpeaker's own Dataset/DataLoader make of nawsv's raw.list."""
    from torch.utils.data import DataLoader
    from wespeaker.dataset.dataset import Dataset
    from wespeaker.utils.file_utils import read_table
    from wespeaker.utils.utils import spk2id

    spk2id_dict = spk2id(read_table(configs["train_label"]))
    dataset = Dataset(configs["data_type"], configs["train_data"], configs["dataset_args"], spk2id_dict)
    return next(iter(DataLoader(dataset, **configs["dataloader_args"]))), spk2id_dict


def nawsv_task(setup: dict, ssl_frozen: bool) -> FinetuneTask:
    cfg_path = setup["root"] / "finetune.yaml"
    cfg_path.write_text("ssl: {mask_time_prob: 0.05, mask_time_length: 2, mask_feature_prob: 0.0, adapter_dim: 8, "
                        "layerdrop: 0.0}\n"
                        "backend: {channels: 16, embed_dim: 16}\nloss: {margin: 0.2, scale: 30.0}\n"
                        "data: {batch_size: 8, num_workers: 0}\nepochs: 2\nfrozen_ssl_epochs: 1\n"
                        "large_margin_epochs: 0\naverage_last: 1\n")
    cfg = load_config(FinetuneConfig, cfg_path)
    store = UtteranceStore.from_raw_list(setup["dev"] / "raw.list")
    task = FinetuneTask(cfg, store, Augmenter(AugmentConfig(prob=0.0), None, None), DistContext(), setup["student"])
    task.configure_epoch(0 if ssl_frozen else 1)
    return task


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen_frontend", "joint"])
def test_loss_and_gradients_through_run_epoch_equal_nawsvs_step(setup, frozen: bool) -> None:
    import wespeaker.utils.schedulers as schedulers
    from wespeaker.utils.executor import run_epoch

    configs = resolve(str(write_config(setup["root"] / f"eq_{frozen}.yaml",
                                       wespeaker_config(setup["dev"], setup["student"], setup["root"] / "eq", frozen))))
    batch, spk2id_dict = wespeaker_batch(configs)
    model = build_model(configs, spk2id_dict)
    task = nawsv_task(setup, ssl_frozen=frozen)
    assert [task.store.speaker_ids[i] for i in range(len(spk2id_dict))] == sorted(spk2id_dict, key=spk2id_dict.get)
    torch.testing.assert_close(model.projection.class_weights, task.aam.class_weights, rtol=0, atol=0)
    # nawsv's modules take the WeSpeaker model's weights: the same starting point for both steps
    task.ssl.load_state_dict(model.frontend.ssl.state_dict())
    task.backend.load_state_dict({k: v for k, v in model.state_dict().items()
                                  if not k.startswith(("frontend.", "projection."))})
    assert task.aam.load_state_dict(model.projection.state_dict(), strict=False).unexpected_keys == []
    assert task.aam.margin == model.projection.margin == 0.2

    wav, labels = batch["wav"].squeeze(1).float(), batch["label"].long()
    torch.manual_seed(123)                                        # dropout / LayerDrop draws, identical on both sides
    loss_nawsv, _ = task.training_step((wav, labels), torch.Generator().manual_seed(77))
    loss_nawsv.backward()

    captured = []
    model.projection.register_forward_hook(lambda module, args, output: captured.append(output[1].detach()))
    model.frontend.reseed(77)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=0.0)
    scheduler = schedulers.NawsvHalfCosineLR(optimizer, num_epochs=2, epoch_iter=1, initial_lr=1e-3, final_lr=1e-5)
    margin = schedulers.MarginScheduler(model=model, epoch_iter=1, **{k: v for k, v in configs["margin_update"].items()
                                                                       if k != "epoch_iter"})
    torch.manual_seed(123)
    run_epoch([batch], 1, ddp, torch.nn.CrossEntropyLoss(), optimizer, scheduler, margin, 1, logging.getLogger("ws"),
              torch.amp.GradScaler("cpu", enabled=False), device=torch.device("cpu"), configs=configs)

    loss_gap = abs(float(captured[0]) - float(loss_nawsv.detach()))
    pairs = [(f"frontend.ssl.{k}", p) for k, p in task.ssl.named_parameters()]
    pairs += [(k, p) for k, p in task.backend.named_parameters()] + [("projection.weight", task.aam.weight)]
    ws_params = dict(model.named_parameters())
    grad_gap, compared = 0.0, 0
    for name, param in pairs:
        theirs = ws_params[name].grad
        if param.grad is None:
            assert theirs is None or not theirs.any(), name
            continue
        grad_gap = max(grad_gap, float((theirs - param.grad).abs().max()))
        compared += 1
    print(f"\nequality ({'frozen' if frozen else 'joint'}): loss {float(loss_nawsv.detach()):.6f}, |loss gap| {loss_gap:.2e}, "
          f"max |grad gap| {grad_gap:.2e} over {compared} tensors")
    assert loss_gap <= TOLERANCE and grad_gap <= TOLERANCE
    assert compared == len(pairs) if not frozen else compared == len(pairs) - len(list(task.ssl.parameters()))


def test_nawsv_lists_read_by_wespeaker_dataset(setup) -> None:
    from wespeaker.dataset.dataset import Dataset
    from wespeaker.utils.file_utils import read_table
    from wespeaker.utils.utils import spk2id

    spk2id_dict = spk2id(read_table(str(setup["dev"] / "utt2spk")))
    args = {"shuffle": False, "filter": False, "speed_perturb": False, "num_frms": 40, "aug_prob": 0.0,
            "frontend": "nawsv_ssl", "nawsv_ssl_args": {"frame_shift": 20, "frame_length": 20}}
    expected = {json.loads(line)["key"]: spk2id_dict[json.loads(line)["spk"]]
                for line in (setup["dev"] / "raw.list").read_text().splitlines()}
    for data_type, listing in (("raw", "raw.list"), ("shard", "shard.list")):
        samples = list(Dataset(data_type, str(setup["dev"] / listing), args, spk2id_dict, repeat_dataset=False))
        assert {s["key"]: int(s["label"]) for s in samples} == expected, data_type
        assert all(s["wav"].shape == (1, 39 * 320 + 320) for s in samples)        # num_frms 40 at 20 ms


def test_trained_by_wespeaker_converted_and_scored_by_nawsv(setup) -> None:
    from wespeaker.utils.checkpoint import load_checkpoint

    from nawsv.models.speaker import load_speaker_model

    exp = setup["root"] / "trained"
    config = write_config(setup["root"] / "train.yaml", wespeaker_config(setup["dev"], setup["student"], exp, False))
    proc = subprocess.run([sys.executable, "-m", "nawsv.integrations.wespeaker.train", "--config", str(config),
                           "--cpu", "True"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in (exp / "models").iterdir()} >= {"model_1.pt", "model_2.pt", "final_model.pt"}
    proc = subprocess.run([sys.executable, "-m", "wespeaker.bin.average_model", "--dst_model",
                           str(exp / "models" / "avg_model.pt"), "--src_path", str(exp / "models"), "--num", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    converted = wespeaker_to_nawsv(exp / "config.yaml", exp / "models" / "avg_model.pt", exp / "nawsv_model.pt")

    configs = yaml.safe_load((exp / "config.yaml").read_text())
    from wespeaker.utils.file_utils import read_table
    from wespeaker.utils.utils import spk2id
    model = build_model(configs, spk2id(read_table(configs["train_label"])))
    load_checkpoint(model, str(exp / "models" / "avg_model.pt"))
    model.eval()
    wav = torch.randn(3, 24000)
    with torch.no_grad():
        ours = load_speaker_model(converted)(wav)
        theirs = model(model.frontend(wav, torch.full((3,), 24000))[0])
    gap = float((ours - theirs).abs().max())
    print(f"\nconverted vs WeSpeaker model: max |embedding gap| {gap:.2e} (embedding norm {float(theirs.norm(dim=1).mean()):.2f})")
    assert gap <= TOLERANCE

    nawsv_exp = setup["root"] / "nawsv_exp"
    run_module("nawsv.bin.extract", "--model", str(converted), "--data_dir", str(setup["test"]), "--out_dir",
               str(nawsv_exp / "embeddings" / "test"), "--device", "cpu", check=True)
    proc = run_module("nawsv.bin.score", "--exp_dir", str(nawsv_exp), "--data_dir", str(setup["test"].parent),
                      "--test_set", "test", "--override", "methods=[cosine,segment,full]", check=True)
    rows = (nawsv_exp / "results.tsv").read_text().splitlines()
    print(proc.stdout)
    assert len(rows) > 1 and "eer" in rows[0].lower()
    from nawsv.api import Verifier                                 # the Python API and stage 8 take it too
    run_module("nawsv.bin.export", "--model", str(converted), "--out_dir", str(nawsv_exp / "export"), check=True)
    exported = Verifier(nawsv_exp / "export").embed(wav[0].numpy(), sample_rate=16000)
    assert float(abs(exported - theirs[0].numpy()).max()) <= 1e-4


def test_student_to_model_init_loads_through_wespeaker(setup, tmp_path: Path) -> None:
    from wespeaker.utils.checkpoint import load_checkpoint

    init = student_to_model_init(setup["student"], tmp_path / "init.pt")
    other = tmp_path / "other.pt"
    save_encoder(build_student(SSLConfig(preset="tiny", adapter_dim=8, init_seed=9)), other)
    configs = resolve(str(write_config(tmp_path / "c.yaml", wespeaker_config(setup["dev"], other, tmp_path, True))))
    from wespeaker.utils.file_utils import read_table
    from wespeaker.utils.utils import spk2id
    model = build_model(configs, spk2id(read_table(configs["train_label"])))
    saved = torch.load(init, weights_only=True)
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    load_checkpoint(model, str(init))                              # WeSpeaker's own loader (strict=False)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert len(saved) == len([k for k in state if k.startswith("frontend.ssl.")])


def test_nawsv_names_resolve_and_unknown_ones_list_the_valid(setup) -> None:
    import wespeaker.bin.train as ws_train
    import wespeaker.utils.schedulers as schedulers

    from nawsv.utils.errors import ConfigError

    assert ws_train.get_speaker_model("NAWSV_ECAPA_TDNN").__name__ == "NawsvEcapaTdnn"
    assert ws_train.get_speaker_model("ECAPA_TDNN_GLOB_c512").__name__ == "ECAPA_TDNN_GLOB_c512"   # theirs intact
    with pytest.raises(ConfigError, match="unknown nawsv model 'NAWSV_ECAPA'.*NAWSV_ECAPA_TDNN"):
        ws_train.get_speaker_model("NAWSV_ECAPA")
    with pytest.raises(ConfigError, match="unknown nawsv projection 'nawsv_aam'.*nawsv_aam_intertopk"):
        ws_train.get_projection({"project_type": "nawsv_aam", "embed_dim": 4, "num_class": 3})
    arc = ws_train.get_projection({"project_type": "arc_margin", "embed_dim": 4, "num_class": 3, "scale": 32.0,
                                   "easy_margin": False})
    assert type(arc).__name__ == "ArcMarginProduct"
    with pytest.raises(ConfigError, match="unknown nawsv scheduler 'NawsvCosine'.*NawsvHalfCosineLR"):
        getattr(schedulers, "NawsvCosine")
    with pytest.raises(AttributeError):
        getattr(schedulers, "NoSuchScheduler")
    assert ws_train.frontend_class_dict["nawsv_ssl"].__name__ == "NawsvSSLFrontend"


def test_launcher_errors_are_one_line(setup, tmp_path: Path) -> None:
    configs = wespeaker_config(setup["dev"], setup["student"], tmp_path / "exp", True)
    configs["dataset_args"]["cmvn"] = True
    bad = write_config(tmp_path / "bad.yaml", configs)
    launcher = [sys.executable, "-m", "nawsv.integrations.wespeaker.train", "--config", str(bad)]
    proc = subprocess.run([*launcher, "--cpu", "True"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("ERROR: dataset_args.cmvn must")
    if not torch.cuda.is_available():                              # WeSpeaker's own train() needs CUDA
        good = write_config(tmp_path / "good.yaml", wespeaker_config(setup["dev"], setup["student"], tmp_path, True))
        proc = subprocess.run([*launcher[:-1], str(good)], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and "needs CUDA" in proc.stderr and "--cpu True" in proc.stderr
