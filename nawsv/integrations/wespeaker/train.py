"""Run WeSpeaker's own trainer (``wespeaker/bin/train.py``, unmodified) with nawsv's modules registered.

Same command line as WeSpeaker's entry, under torchrun for several processes or nodes::

    torchrun --nnodes 1 --nproc_per_node 4 --standalone -m nawsv.integrations.wespeaker.train --config c.yaml
    python -m nawsv.integrations.wespeaker.train --config c.yaml --ssl_init exp/nawsv/warmup/student.pt
    ... --cpu True        # the same train() on CPUs: cpu_shim redirects its CUDA/NCCL calls to the CPU/gloo

Before WeSpeaker reads it, the config is checked and completed here and written to ``<exp_dir>/nawsv_config.yaml``:

- ``gpus``: one device per process of this node (``LOCAL_WORLD_SIZE``), as WeSpeaker's ``--gpus`` list; a
  config that names fewer devices than processes is an error (WeSpeaker would index past it);
- ``global_batch_size``: split over all processes (``dataloader_args.batch_size`` = global / ``WORLD_SIZE``), so
  the batch per optimiser step -- and with it WeSpeaker's ``scale_ratio`` and the LR -- does not depend on the
  GPU count;
- every path (exp_dir, lists, banks, checkpoints, the student) made absolute, so ``config.yaml`` stays usable
  from any directory.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import yaml

from nawsv.integrations.wespeaker.registry import prepare_config, register
from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import ConfigError

SINGLE_PROCESS_ENV = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
PATH_KEYS = ("exp_dir", "train_data", "train_label", "reverb_data", "noise_data", "model_init", "checkpoint")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def device_list(gpus: Any, local_world_size: int) -> list[int]:
    """WeSpeaker's ``gpus`` (indexed by local rank) for ``local_world_size`` processes on this node."""
    if isinstance(gpus, str):
        gpus = yaml.safe_load(gpus)          # "[0,1]" as WeSpeaker's run.sh hands it to --gpus
    if gpus is None:
        return list(range(local_world_size))
    gpus = [gpus] if isinstance(gpus, int) else list(gpus)
    if len(gpus) < local_world_size:
        raise ConfigError(f"gpus {gpus} names {len(gpus)} device(s) for {local_world_size} processes per node; "
                          f"list one per process or remove gpus (then process i uses GPU i)")
    return [int(gpu) for gpu in gpus]


def split_batch(configs: dict[str, Any], world_size: int) -> None:
    """``global_batch_size`` -> WeSpeaker's per-process ``dataloader_args.batch_size``."""
    loader = configs.setdefault("dataloader_args", {})
    total = configs.get("global_batch_size")
    if total is None:
        if "batch_size" not in loader:
            raise ConfigError("set global_batch_size (the batch per optimiser step, split over the processes)")
        return                                # a plain WeSpeaker config: batch_size per process, as upstream
    if "batch_size" in loader:
        raise ConfigError(f"both global_batch_size ({total}) and dataloader_args.batch_size "
                          f"({loader['batch_size']}) are set; keep global_batch_size only")
    if int(total) % world_size:
        raise ConfigError(f"global_batch_size {total} is not divisible by the {world_size} processes")
    loader["batch_size"] = int(total) // world_size


def absolute_paths(configs: dict[str, Any]) -> None:
    """Every path of the config relative to the launch directory -> absolute (``None`` stays ``None``)."""
    def absolute(value: Any) -> Any:
        return value if value is None else str(Path(value).absolute())

    for key in PATH_KEYS:
        if key in configs:
            configs[key] = absolute(configs[key])
    ssl_args = configs.get("dataset_args", {}).get("nawsv_ssl_args")
    if ssl_args and "init" in ssl_args:
        ssl_args["init"] = absolute(ssl_args["init"])
    projection_args = configs.get("projection_args", {})
    if isinstance(projection_args.get("train_label"), str):
        projection_args["train_label"] = absolute(projection_args["train_label"])


def resolve(config: str, ssl_init: str | None = None, **overrides: Any) -> dict[str, Any]:
    """WeSpeaker's own config parsing (YAML + top-level ``--key value`` overrides), then nawsv's completion.

    ``ssl_init`` sets ``dataset_args.nawsv_ssl_args.init`` (nested, so WeSpeaker's overrides cannot reach it).
    The process counts come from torchrun's environment (one process when absent).
    """
    from wespeaker.utils.utils import parse_config_or_kwargs

    configs = parse_config_or_kwargs(config, **overrides)
    if ssl_init is not None:
        configs.setdefault("dataset_args", {}).setdefault("nawsv_ssl_args", {})["init"] = str(ssl_init)
    configs["gpus"] = device_list(configs.get("gpus"), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    split_batch(configs, int(os.environ.get("WORLD_SIZE", "1")))
    absolute_paths(configs)
    return prepare_config(configs)


def write_config(configs: dict[str, Any], name: str = "nawsv_config.yaml") -> Path:
    """The resolved config in the experiment dir (every rank writes the same bytes atomically)."""
    path = Path(configs["exp_dir"]) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as handle:
        yaml.safe_dump(configs, handle, sort_keys=True)
    return path


def main(config: str = "conf/config.yaml", cpu: bool = False, ssl_init: str | None = None, **overrides: Any) -> None:
    """Register nawsv's modules, resolve the config, run WeSpeaker's ``train()`` (through the CPU shim if ``cpu``)."""
    if "WORLD_SIZE" not in os.environ:                 # a plain `python -m` run: one process, as torchrun would say
        os.environ.update(SINGLE_PROCESS_ENV)
    register()
    configs = resolve(config, ssl_init, **overrides)
    import torch
    import wespeaker.bin.train as wespeaker_train

    path = str(write_config(configs))
    if cpu:
        from nawsv.integrations.wespeaker.cpu_shim import cpu_devices

        with cpu_devices(wespeaker_train):
            wespeaker_train.train(path)
        return
    if not torch.cuda.is_available():
        raise ConfigError("WeSpeaker's train() needs CUDA (it calls torch.cuda.set_device and uses NCCL); no GPU is "
                          "visible here: pass --cpu True to run it on CPUs (gloo)")
    if "MASTER_PORT" not in os.environ:                # NCCL's env:// rendezvous, for the lone process
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    wespeaker_train.train(path)


if __name__ == "__main__":
    import sys

    import fire

    from nawsv.utils.errors import NawsvError

    try:
        fire.Fire(main)
    except NawsvError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
