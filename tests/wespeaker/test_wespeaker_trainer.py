"""nawsv inside WeSpeaker's real trainer (run in .venv-wespeaker: bash tools/test.sh does it), on CPU.

WeSpeaker's ``train()`` runs unmodified, with 1 and 2 processes (and 2 nodes) on the configs shipped in
egs/*/conf/wespeaker/, through the CPU shim that only turns its CUDA/NCCL calls into CPU/gloo ones. Equality, not
"it ran": on the same weights and the same WeSpeaker batch, the loss and every gradient through WeSpeaker's
``run_epoch`` equal nawsv's own fine-tune step; a chained run starts from the previous run's head; the converted
model embeds like the WeSpeaker model.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import yaml

from nawsv.data.augment import AugmentConfig, Augmenter
from nawsv.data.store import UtteranceStore
from nawsv.integrations.wespeaker import augment
from nawsv.integrations.wespeaker import train as launcher
from nawsv.integrations.wespeaker.convert import student_to_model_init, wespeaker_to_nawsv
from nawsv.integrations.wespeaker.registry import register
from nawsv.integrations.wespeaker.runs import average
from nawsv.integrations.wespeaker.train import resolve
from nawsv.models.config import SSLConfig
from nawsv.models.ssl import build_student, save_encoder
from nawsv.train.distributed import DistContext
from nawsv.train.finetune import FinetuneConfig, FinetuneTask
from nawsv.utils.config import load_config
from tests.conftest import ROOT, run_module
from tests.gloo import free_port

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
        "scheduler_args": {"initial_lr": 1e-3, "final_lr": 1e-5, "total_epochs": 2, "epoch_offset": 0,
                           "base_batch_size": 8},
        **top,
    }


MINI_CONF = ROOT / "egs" / "mini" / "conf" / "wespeaker"
SHIPPED = sorted((ROOT / "egs").glob("*/conf/wespeaker/nawsv_*.yaml"))


@pytest.fixture(scope="module")
def setup(train_data, tmp_path_factory: pytest.TempPathFactory) -> dict:
    register()
    root = tmp_path_factory.mktemp("wespeaker")
    student = root / "student.pt"
    save_encoder(build_student(SSLConfig(preset="tiny", adapter_dim=8, init_seed=5)), student)
    banks = {name: Path(shutil.copytree(train_data[name], root / "data" / name)) for name in ("musan_train", "rirs")}
    return {"root": root, "student": student, "dev": train_data["dev"], "test": train_data["test"],
            "noise_data": augment.build_lmdb(banks["musan_train"]), "reverb_data": augment.build_lmdb(banks["rirs"])}


def write_config(path: Path, configs: dict) -> Path:
    path.write_text(yaml.safe_dump(configs))
    return path


def data_args(setup: dict, exp_dir: Path) -> dict[str, str]:
    """The top-level overrides tools/wespeaker_phase2.sh gives every run (WeSpeaker's own ``--key value``)."""
    return {"exp_dir": str(exp_dir), "train_data": str(setup["dev"] / "raw.list"),
            "train_label": str(setup["dev"] / "utt2spk"), "data_type": "raw", "ssl_init": str(setup["student"]),
            "noise_data": str(setup["noise_data"]), "reverb_data": str(setup["reverb_data"])}


class _Entered(Exception):
    """Raised by the spy at WeSpeaker's first run_epoch call: everything train() builds is built by then."""


def what_train_builds(config: Path, monkeypatch: pytest.MonkeyPatch, inside: Any = None,
                      **overrides: Any) -> dict[str, Any]:
    """WeSpeaker's ``train()`` in this process (launcher, CPU shim), stopped as it enters its first epoch.

    Returns its model, a copy of the state it would start training from, its scheduler, its configs and the
    epoch; ``inside(ddp_model, loader, optimizer, scheduler, margin_scheduler, scaler, device, configs)`` runs at
    that point, with the process group still up. Only ``run_epoch`` is spied on; train() runs as shipped.
    """
    import wespeaker.bin.train as wespeaker_train

    seen: dict[str, Any] = {}

    def spy(dataloader, epoch_iter, ddp_model, criterion, optimizer, scheduler, margin_scheduler, epoch, logger,
            scaler, device, configs) -> None:
        seen.update(model=ddp_model.module, scheduler=scheduler, configs=configs, epoch=epoch,
                    state={k: v.detach().clone() for k, v in ddp_model.module.state_dict().items()})
        if inside is not None:
            inside(ddp_model, dataloader, optimizer, scheduler, margin_scheduler, scaler, device, configs)
        raise _Entered

    monkeypatch.setattr(wespeaker_train, "run_epoch", spy)
    for key, value in launcher.SINGLE_PROCESS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(_Entered):
        launcher.main(str(config), cpu=True, **overrides)
    assert not dist.is_initialized()                                # the shim took its process group down
    return seen


def built_as_extract_builds(configs: dict, checkpoint: Path | None) -> torch.nn.Module:
    """The model as WeSpeaker's bin/extract.py builds it from an experiment's config.yaml (its own functions)."""
    import wespeaker.bin.train as wespeaker_train
    from wespeaker.utils.checkpoint import load_checkpoint

    dataset_args = configs["dataset_args"]
    model = wespeaker_train.get_speaker_model(configs["model"])(**configs["model_args"])
    frontend = wespeaker_train.frontend_class_dict[dataset_args["frontend"]](
        **dataset_args[dataset_args["frontend"] + "_args"], sample_rate=dataset_args["resample_rate"])
    model.add_module("frontend", frontend)
    if checkpoint is not None:
        load_checkpoint(model, str(checkpoint))
    return model.eval()


def phase2(setup: dict, exp: Path, *options: str, overrides: tuple[str, ...] = ()) -> subprocess.Popen:
    """tools/wespeaker_phase2.sh on the shipped mini configs, started (the caller waits)."""
    command = ["bash", str(ROOT / "tools" / "wespeaker_phase2.sh"), "--conf_dir", str(MINI_CONF), "--train_data",
               str(setup["dev"]), "--init", str(setup["student"]), "--exp_dir", str(exp), "--device", "cpu",
               *options, "--", *overrides]
    env = dict(os.environ, PYTHONPATH=str(ROOT), NAWSV_WESPEAKER_VENV=sys.prefix, OMP_NUM_THREADS="1")
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


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
def test_loss_and_gradients_through_run_epoch_equal_nawsvs_step(setup, frozen: bool, monkeypatch) -> None:
    from wespeaker.utils.executor import run_epoch
    from wespeaker.utils.file_utils import read_table
    from wespeaker.utils.utils import spk2id

    config = write_config(setup["root"] / f"eq_{frozen}.yaml",
                          wespeaker_config(setup["dev"], setup["student"], setup["root"] / f"eq_{frozen}", frozen))
    spk2id_dict = spk2id(read_table(str(setup["dev"] / "utt2spk")))
    task = nawsv_task(setup, ssl_frozen=frozen)
    result: dict[str, Any] = {}

    def compare(ddp, loader, optimizer, scheduler, margin_scheduler, scaler, device, configs) -> None:
        """At WeSpeaker's first run_epoch: nawsv's step and WeSpeaker's on its model, batch and objects."""
        model = ddp.module
        batch = next(iter(loader))
        assert [task.store.speaker_ids[i] for i in range(len(spk2id_dict))] == sorted(spk2id_dict,
                                                                                       key=spk2id_dict.get)
        torch.testing.assert_close(model.projection.class_weights, task.aam.class_weights, rtol=0, atol=0)
        # nawsv's modules take the WeSpeaker model's weights: the same starting point for both steps
        task.ssl.load_state_dict(model.frontend.ssl.state_dict())
        task.backend.load_state_dict({k: v for k, v in model.state_dict().items()
                                      if not k.startswith(("frontend.", "projection."))})
        assert task.aam.load_state_dict(model.projection.state_dict(), strict=False).unexpected_keys == []
        wav, labels = batch["wav"].squeeze(1).float(), batch["label"].long()
        torch.manual_seed(123)                                    # dropout / LayerDrop draws, identical on both sides
        result["nawsv"], _ = task.training_step((wav, labels), torch.Generator().manual_seed(77))
        result["nawsv"].backward()
        model.projection.register_forward_hook(lambda module, args, out: result.update(wespeaker=out[1]))
        model.frontend.reseed(77)
        torch.manual_seed(123)
        run_epoch([batch], 1, ddp, torch.nn.CrossEntropyLoss(), optimizer, scheduler, margin_scheduler, 1,
                  logging.getLogger("ws"), scaler, device=device, configs=configs)
        assert task.aam.margin == model.projection.margin == 0.2
        assert model.frontend.generator.device.type == "cpu"       # nawsv's masks: a CPU generator on any device
        result["model"] = model

    what_train_builds(config, monkeypatch, inside=compare)
    model = result["model"]
    loss_gap = abs(float(result["wespeaker"].detach()) - float(result["nawsv"].detach()))
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
    print(f"\nequality ({'frozen' if frozen else 'joint'}): loss {float(result['nawsv'].detach()):.6f}, "
          f"|loss gap| {loss_gap:.2e}, max |grad gap| {grad_gap:.2e} over {compared} tensors")
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


def test_one_process_on_the_shipped_config_then_converted_and_scored_by_nawsv(setup) -> None:
    """WeSpeaker's train() in one process on egs/mini's joint_ft config; only data, sizes of the run and paths set."""
    from nawsv.models.speaker import load_speaker_model

    exp = setup["root"] / "trained"
    args = {**data_args(setup, Path("trained")), "global_batch_size": 8, "num_avg": 2}    # exp_dir relative to cwd
    command = [sys.executable, "-m", "nawsv.integrations.wespeaker.train", "--config",
               str(MINI_CONF / "nawsv_joint_ft.yaml"), "--cpu", "True"]
    command += [item for key, value in args.items() for item in (f"--{key}", str(value))]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=setup["root"],
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in (exp / "models").iterdir()} >= {"model_1.pt", "model_2.pt", "final_model.pt"}
    configs = yaml.safe_load((exp / "config.yaml").read_text())                  # WeSpeaker's own copy
    shipped = yaml.safe_load((MINI_CONF / "nawsv_joint_ft.yaml").read_text())
    assert configs["model_args"]["channels"] == shipped["model_args"]["channels"]
    assert configs["dataset_args"]["num_frms"] == shipped["dataset_args"]["num_frms"]
    assert configs["gpus"] == [0] and configs["dataloader_args"]["batch_size"] == 8
    for path in (configs["exp_dir"], configs["train_data"], configs["dataset_args"]["nawsv_ssl_args"]["init"],
                 configs["projection_args"]["train_label"]):
        assert Path(path).is_absolute() and Path(path).exists(), path
    avg = average(exp)                                                            # WeSpeaker's average_model.py
    converted = wespeaker_to_nawsv(exp / "config.yaml", avg, exp / "nawsv_model.pt")

    model = built_as_extract_builds(configs, avg)
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
    configs["model_args"]["feat_dim"] = 128                                       # the tiny student's output_size()
    model = built_as_extract_builds(configs, None)
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

    assert ws_train.get_speaker_model("NAWSV_ECAPA_TDNN").__name__ == "nawsv_ecapa_tdnn"
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
    command = [sys.executable, "-m", "nawsv.integrations.wespeaker.train", "--config", str(bad)]
    proc = subprocess.run([*command, "--cpu", "True"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("ERROR: dataset_args.cmvn must")
    if not torch.cuda.is_available():                              # WeSpeaker's own train() needs CUDA
        good = write_config(tmp_path / "good.yaml", wespeaker_config(setup["dev"], setup["student"], tmp_path, True))
        proc = subprocess.run([*command[:-1], str(good)], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 2 and "needs CUDA" in proc.stderr and "--cpu True" in proc.stderr


SMALL_RUNS = ("--global_batch_size", "8", "--num_epochs", "1")      # WeSpeaker's top-level overrides: 3 steps


@pytest.fixture(scope="module")
def chained(setup) -> Path:
    """tools/wespeaker_phase2.sh on mini's shipped configs through the CPU shim, as a user would run it twice:

    run frozen on 2 nodes x 1 process (two commands meeting at one rendezvous, as train.sbatch starts them), then
    frozen (already trained) -> joint_ft on 1 node x 2 processes (torchrun --standalone).
    """
    exp = setup["root"] / "chained"
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [phase2(setup, exp, "--nnodes", "2", "--rdzv_endpoint", endpoint, "--runs", "frozen",
                    overrides=SMALL_RUNS) for _ in range(2)]
    for node in nodes:
        finished(node)
    out = finished(phase2(setup, exp, "--nproc", "2", "--runs", "frozen joint_ft", overrides=SMALL_RUNS))
    assert "frozen already trained" in out
    return exp


def test_two_nodes_meet_in_one_process_group(chained: Path) -> None:
    log_lines = (chained / "wespeaker" / "frozen" / "train.log").read_text()
    assert log_lines.count("this gpu 0") == 2                                 # local rank 0 on each node
    assert "epoch iteration number: 3" in log_lines                           # world size 2, not two groups of 1
    assert sorted(p.name for p in (chained / "wespeaker" / "frozen" / "models").iterdir()) == \
        ["avg_model.pt", "final_model.pt", "model_1.pt"]


def test_two_processes_are_one_group_with_the_global_batch_split(chained: Path) -> None:
    run = chained / "wespeaker" / "joint_ft"
    log_lines = (run / "train.log").read_text()
    # WeSpeaker logs "this gpu <local rank>" only when WORLD_SIZE > 1: both ranks, in one group
    assert "this gpu 0" in log_lines and "this gpu 1" in log_lines
    assert "epoch iteration number: 3" in log_lines                           # 24 utterances // 2 // 4
    configs = yaml.safe_load((run / "config.yaml").read_text())
    assert configs["gpus"] == [0, 1] and configs["dataloader_args"]["batch_size"] == 4
    assert configs["scheduler_args"]["scale_ratio"] == 8 / 64                  # world 2 x 4: the global batch
    assert Path(configs["exp_dir"]).is_absolute() and Path(configs["train_label"]).is_absolute()
    assert (chained / "avg_model.pt").is_file()                                # converted for stages 5-8


def test_chained_run_starts_from_the_previous_runs_head(setup, chained: Path, monkeypatch) -> None:
    """As run_wavlm.sh: run 2 loads run 1's average (model_0.pt) with --checkpoint, the AAM projection included."""
    frozen_end = torch.load(chained / "wespeaker" / "frozen" / "models" / "model_1.pt", weights_only=True)
    model_0 = chained / "wespeaker" / "joint_ft" / "models" / "model_0.pt"
    assert all(torch.equal(value, frozen_end[key]) for key, value in torch.load(model_0, weights_only=True).items())
    config = MINI_CONF / "nawsv_joint_ft.yaml"
    start = what_train_builds(config, monkeypatch, **data_args(setup, setup["root"] / "rerun_joint_ft"),
                              global_batch_size=8, checkpoint=str(model_0))
    assert start["epoch"] == 1 and start["state"].keys() == frozen_end.keys()
    assert all(torch.equal(start["state"][key], frozen_end[key]) for key in frozen_end)    # head, model, front-end
    # what the bridge did before: --model_init, whose projection WeSpeaker drops (a new random head)
    fresh = what_train_builds(config, monkeypatch, **data_args(setup, setup["root"] / "model_init_joint_ft"),
                              global_batch_size=8, model_init=str(model_0))
    assert not torch.equal(fresh["state"]["projection.weight"], frozen_end["projection.weight"])

