"""WeSpeaker's ``bin/train.py`` on a CPU: the same WeSpeaker calls in the same order, one gloo process.

Upstream ``train()`` calls ``torch.cuda.set_device`` and NCCL unconditionally, so it cannot run without a GPU.
This mirror keeps everything that decides the result -- WeSpeaker's ``Dataset`` and ``DataLoader`` arguments,
``get_speaker_model`` / ``get_projection`` (as bound in ``wespeaker.bin.train``), ``load_checkpoint``, its
schedulers, ``run_epoch`` on a DistributedDataParallel model, ``save_checkpoint`` -- and leaves out only the
device calls. It is how the integration tests and small CPU runs train through WeSpeaker.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn

from nawsv.utils.errors import ExperimentError

log = logging.getLogger(__name__)


def init_single_process() -> None:
    """A one-process gloo group (DistributedDataParallel needs one) on an in-memory store: no port to clash."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def build_model(configs: dict[str, Any], spk2id_dict: dict[str, int]) -> nn.Module:
    """Front-end -> speaker model -> projection, as ``bin/train.py`` builds them (``configs`` is updated likewise)."""
    import wespeaker.bin.train as ws_train
    from wespeaker.utils.checkpoint import load_checkpoint

    dataset_args = configs["dataset_args"]
    frontend_type = dataset_args.get("frontend", "fbank")
    if frontend_type != "fbank":
        frontend = ws_train.frontend_class_dict[frontend_type](**dataset_args[frontend_type + "_args"],
                                                               sample_rate=dataset_args["resample_rate"])
        configs["model_args"]["feat_dim"] = frontend.output_size()
        model = ws_train.get_speaker_model(configs["model"])(**configs["model_args"])
        model.add_module("frontend", frontend)
    else:
        model = ws_train.get_speaker_model(configs["model"])(**configs["model_args"])
    if configs.get("model_init") is not None:
        load_checkpoint(model, configs["model_init"])
    projection_args = configs["projection_args"]
    projection_args["embed_dim"] = configs["model_args"]["embed_dim"]
    projection_args["num_class"] = len(spk2id_dict)
    projection_args["do_lm"] = configs.get("do_lm", False)
    if configs["data_type"] != "feat" and dataset_args["speed_perturb"]:
        projection_args["num_class"] *= 3
        if configs.get("do_lm", False):
            dataset_args["speed_perturb"] = False
    model.add_module("projection", ws_train.get_projection(projection_args))
    return model


def train_cpu(configs: dict[str, Any]) -> Path:
    """Train as WeSpeaker's ``train()`` would on one CPU process; returns the models dir."""
    import tableprint as tp
    import wespeaker.utils.schedulers as schedulers
    from torch.utils.data import DataLoader
    from wespeaker.dataset.dataset import Dataset
    from wespeaker.utils.checkpoint import load_checkpoint, save_checkpoint
    from wespeaker.utils.executor import run_epoch
    from wespeaker.utils.file_utils import read_table
    from wespeaker.utils.utils import get_logger, set_seed, spk2id

    init_single_process()
    model_dir = Path(configs["exp_dir"]) / "models"
    checkpoint = configs.get("checkpoint")
    if model_dir.exists() and checkpoint is None:
        raise ExperimentError(f"{model_dir} exists and no checkpoint is given: WeSpeaker does not train over it; "
                              f"resume with --checkpoint {model_dir}/model_<N>.pt or use a new exp_dir")
    model_dir.mkdir(parents=True, exist_ok=True)
    logger = get_logger(configs["exp_dir"], "train.log")
    set_seed(configs["seed"])
    train_utt_spk_list = read_table(configs["train_label"])
    spk2id_dict = spk2id(train_utt_spk_list)
    dataset = Dataset(configs["data_type"], configs["train_data"], configs["dataset_args"], spk2id_dict,
                      reverb_lmdb_file=configs.get("reverb_data"), noise_lmdb_file=configs.get("noise_data"))
    loader = DataLoader(dataset, **configs["dataloader_args"])
    batch_size = configs["dataloader_args"]["batch_size"]
    samples = configs["dataset_args"].get("sample_num_per_epoch", 0) or len(train_utt_spk_list)
    epoch_iter = samples // batch_size
    logger.info("train data num: %d, spk num: %d, epoch iteration number: %d", len(train_utt_spk_list),
                len(spk2id_dict), epoch_iter)
    model = build_model(configs, spk2id_dict)
    logger.info("initial model: %s", configs.get("model_init") or "the front-end's init only")
    start_epoch = 1
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
        start_epoch = int(Path(checkpoint).stem.split("_")[-1]) + 1
    ddp_model = nn.parallel.DistributedDataParallel(model)
    criterion = getattr(nn, configs["loss"])(**configs["loss_args"])
    if "initial_lr" in configs["scheduler_args"]:
        configs["optimizer_args"]["lr"] = configs["scheduler_args"]["initial_lr"]
    optimizer = getattr(torch.optim, configs["optimizer"])(ddp_model.parameters(), **configs["optimizer_args"])
    configs["scheduler_args"].update(num_epochs=configs["num_epochs"], epoch_iter=epoch_iter,
                                     scale_ratio=batch_size / 64)
    scheduler = getattr(schedulers, configs["scheduler"])(optimizer, **configs["scheduler_args"])
    configs["margin_update"]["epoch_iter"] = epoch_iter
    margin_scheduler = getattr(schedulers, configs["margin_scheduler"])(model=model, **configs["margin_update"])
    with open(Path(configs["exp_dir"]) / "config.yaml", "w", encoding="utf-8") as handle:
        handle.write(yaml.dump(configs))
    for line in tp.header(["Epoch", "Batch", "Lr", "Margin", "Loss", "Acc"], width=10, style="grid").split("\n"):
        logger.info(line)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for epoch in range(start_epoch, configs["num_epochs"] + 1):
        dataset.set_epoch(epoch)
        run_epoch(loader, epoch_iter, ddp_model, criterion, optimizer, scheduler, margin_scheduler, epoch, logger,
                  scaler, device=torch.device("cpu"), configs=configs)
        if epoch % configs["save_epoch_interval"] == 0 or epoch > configs["num_epochs"] - configs["num_avg"]:
            save_checkpoint(model, str(model_dir / f"model_{epoch}.pt"))
    final = model_dir / "final_model.pt"
    if not final.exists():
        final.symlink_to(f"model_{configs['num_epochs']}.pt")
    return model_dir
