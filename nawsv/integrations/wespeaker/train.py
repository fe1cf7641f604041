"""Run WeSpeaker's own trainer (``wespeaker/bin/train.py``) with nawsv's modules registered.

Same command line as WeSpeaker's entry, from a WeSpeaker recipe directory::

    torchrun --standalone --nproc_per_node=4 -m nawsv.integrations.wespeaker.train --config conf/nawsv_frozen.yaml
    python -m nawsv.integrations.wespeaker.train --config conf/nawsv_frozen.yaml --gpus "[0]"   # WORLD_SIZE=1
    ... --ssl_init exp/nawsv/warmup/student.pt     # sets dataset_args.nawsv_ssl_args.init

The config is checked and completed (:func:`~nawsv.integrations.wespeaker.registry.prepare_config`), written to
``<exp_dir>/nawsv_config.yaml`` and handed to WeSpeaker's ``train()``, which needs CUDA and NCCL as upstream.
``--cpu`` runs :func:`nawsv.integrations.wespeaker.local.train_cpu` instead: the same WeSpeaker calls in one
process on a CPU (gloo), for small corpora and tests.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from nawsv.integrations.wespeaker.registry import prepare_config, register
from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import ConfigError

SINGLE_PROCESS_ENV = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                      "MASTER_PORT": "29533"}


def resolve(config: str, ssl_init: str | None = None, **overrides: Any) -> dict[str, Any]:
    """WeSpeaker's own config parsing (YAML + top-level ``--key value`` overrides), then nawsv's checks.

    ``ssl_init`` sets ``dataset_args.nawsv_ssl_args.init`` (nested, so WeSpeaker's overrides cannot reach it).
    """
    from wespeaker.utils.utils import parse_config_or_kwargs

    configs = parse_config_or_kwargs(config, **overrides)
    if ssl_init is not None:
        configs.setdefault("dataset_args", {}).setdefault("nawsv_ssl_args", {})["init"] = str(ssl_init)
    return prepare_config(configs)


def write_config(configs: dict[str, Any], name: str = "nawsv_config.yaml") -> Path:
    """The resolved config in the experiment dir (every rank writes the same bytes atomically)."""
    path = Path(configs["exp_dir"]) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as handle:
        yaml.safe_dump(configs, handle, sort_keys=True)
    return path


def main(config: str = "conf/config.yaml", cpu: bool = False, ssl_init: str | None = None, **overrides: Any) -> None:
    """Register, resolve, train (WeSpeaker's ``train()``, or its CPU mirror with ``cpu=True``)."""
    register()
    configs = resolve(config, ssl_init, **overrides)
    if cpu:
        from nawsv.integrations.wespeaker.local import train_cpu

        train_cpu(configs)
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("WeSpeaker's train() needs CUDA (it calls torch.cuda.set_device and uses NCCL); no GPU is "
                          "visible here: pass --cpu True to run the same WeSpeaker calls in one CPU process")
    for key, value in SINGLE_PROCESS_ENV.items():     # a plain `python -m` run: one process, as torchrun would say
        os.environ.setdefault(key, value)
    from wespeaker.bin.train import train

    train(str(write_config(configs)))


if __name__ == "__main__":
    import sys

    import fire

    from nawsv.utils.errors import NawsvError

    try:
        fire.Fire(main)
    except NawsvError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
