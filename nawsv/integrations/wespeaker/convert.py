"""Converters between WeSpeaker experiments and nawsv model files (torch + nawsv only; WeSpeaker not needed).

* ``to-nawsv``: a WeSpeaker experiment (``config.yaml`` + ``models/avg_model.pt``) -> nawsv's self-describing
  speaker model, so stages 5-8, ``Verifier`` and export run on it. Two kinds convert: those trained with nawsv's
  modules (``nawsv_ssl`` + ``NAWSV_ECAPA_TDNN``), and those of WeSpeaker's own SSL recipe (``s3prl`` WavLM with its
  layer weights, ``cmvn``, ``ECAPA_TDNN[_GLOB]_c512/c1024``; :mod:`nawsv.integrations.wespeaker.s3prl_import`).
* ``from-student``: nawsv's stage-3 ``student.pt`` -> a WeSpeaker ``model_init`` checkpoint (``frontend.ssl.*``
  tensors), loaded by WeSpeaker's ``load_checkpoint`` into a ``nawsv_ssl`` front-end of the same architecture.

    python -m nawsv.integrations.wespeaker.convert to-nawsv --exp_dir exp/nawsv_lmft --out exp/x/finetune/avg_model.pt
    python -m nawsv.integrations.wespeaker.convert to-nawsv --exp_dir exp/wavlm_joint_lmft \
        --out exp/ws_wavlm/finetune/avg_model.pt [--upstream_ckpt s3prl_hub/<hash>.wavlm_large.pt]
    python -m nawsv.integrations.wespeaker.convert from-student --student exp/x/warmup/student.pt --out init.pt
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
import yaml

from nawsv.integrations.wespeaker.modules import NawsvSSLFrontend, backend_state
from nawsv.models.registry import build_backend
from nawsv.models.speaker import save_speaker_model
from nawsv.models.ssl import build_student_from_state, load_encoder_state
from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import ConfigError, ExperimentError

log = logging.getLogger(__name__)
SSL_PREFIX = "frontend.ssl."
BACKEND_NAME = "ecapa_tdnn_small"


def read_wespeaker_config(path: str | Path) -> dict[str, Any]:
    """A WeSpeaker ``config.yaml`` of a kind that converts, or an error saying what it uses instead."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"{path} does not exist; WeSpeaker writes config.yaml into exp_dir when training starts")
    configs = yaml.safe_load(path.read_text(encoding="utf-8"))
    frontend = configs.get("dataset_args", {}).get("frontend")
    if (frontend, configs.get("model")) != ("nawsv_ssl", "NAWSV_ECAPA_TDNN") and frontend != "s3prl":
        raise ConfigError(f"{path}: front-end {frontend!r} / model {configs.get('model')!r}; experiments trained with "
                          f"frontend nawsv_ssl + model NAWSV_ECAPA_TDNN, or with frontend s3prl (WavLM) + an "
                          f"ECAPA_TDNN model, convert to a nawsv speaker model")
    return configs


def load_wespeaker_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict saved by WeSpeaker (``save_checkpoint`` / ``average_model.py``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExperimentError(f"{path} does not exist; average the epochs first (wespeaker/bin/average_model.py)"
                              ) from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, source: Path) -> None:
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ExperimentError(f"{source}: the {what} tensors do not fit the config's architecture (missing "
                              f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")


def wespeaker_to_nawsv(config: str | Path, checkpoint: str | Path, out: str | Path,
                       upstream_ckpt: str | Path | None = None) -> Path:
    """Write nawsv's speaker model for a WeSpeaker checkpoint (``upstream_ckpt``: see ``s3prl_import``)."""
    configs = read_wespeaker_config(config)
    if configs["dataset_args"]["frontend"] == "s3prl":
        from nawsv.integrations.wespeaker.s3prl_import import (BACKEND_NAME as IMPORTED, describe_import,
                                                               import_wespeaker_s3prl)

        ssl, backend, kwargs = import_wespeaker_s3prl(configs, load_wespeaker_state(checkpoint), Path(checkpoint),
                                                      upstream_ckpt)
        save_speaker_model(out, ssl, IMPORTED, kwargs, backend, converted_from=str(checkpoint),
                           wespeaker_config=str(config))
        log.info("wrote %s from %s (%s)", out, checkpoint, describe_import(ssl))
        return Path(out)
    return _bridge_to_nawsv(configs, config, checkpoint, out)


def _bridge_to_nawsv(configs: dict[str, Any], config: str | Path, checkpoint: str | Path, out: str | Path) -> Path:
    """A model trained with nawsv's modules: the front-end architecture comes from its init."""
    dataset_args = configs["dataset_args"]
    frontend = NawsvSSLFrontend(sample_rate=dataset_args.get("resample_rate", 16000), **dataset_args["nawsv_ssl_args"])
    state = load_wespeaker_state(checkpoint)
    _load_strict(frontend.ssl, {k[len(SSL_PREFIX):]: v for k, v in state.items() if k.startswith(SSL_PREFIX)},
                 "front-end", Path(checkpoint))
    model_args = configs["model_args"]
    kwargs = {"num_hidden_states": int(model_args["num_hidden_states"]), "input_dim": int(model_args["feat_dim"]),
              "channels": int(model_args.get("channels", 512)), "embed_dim": int(model_args["embed_dim"])}
    backend = build_backend(BACKEND_NAME, **kwargs)
    _load_strict(backend, backend_state(state), "speaker-model", Path(checkpoint))
    save_speaker_model(out, frontend.ssl, BACKEND_NAME, kwargs, backend, converted_from=str(checkpoint),
                       wespeaker_config=str(config))
    log.info("wrote %s from %s", out, checkpoint)
    return Path(out)


def student_to_model_init(student: str | Path, out: str | Path) -> Path:
    """Write the student's tensors under ``frontend.ssl.``: WeSpeaker's ``model_init`` for a nawsv_ssl front-end."""
    ssl = build_student_from_state(load_encoder_state(student))
    state = {SSL_PREFIX + k: v.detach().clone() for k, v in ssl.state_dict().items()}
    with atomic_open(out, "wb", encoding=None) as handle:
        torch.save(state, handle)
    log.info("wrote %s (%d front-end tensors from %s)", out, len(state), student)
    return Path(out)


def build_parser() -> argparse.ArgumentParser:
    from nawsv.utils.cli import StageParser

    parser = StageParser(prog="python -m nawsv.integrations.wespeaker.convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    to_nawsv = commands.add_parser("to-nawsv", help="WeSpeaker experiment -> nawsv speaker model (avg_model.pt)")
    to_nawsv.add_argument("--exp_dir", required=True, type=Path, help="WeSpeaker exp_dir (holds config.yaml, models/)")
    to_nawsv.add_argument("--checkpoint", type=Path, help="default: <exp_dir>/models/avg_model.pt")
    to_nawsv.add_argument("--out", required=True, type=Path, help="nawsv speaker model file to write")
    to_nawsv.add_argument("--upstream_ckpt", type=Path,
                          help="s3prl front-end only: the s3prl WavLM checkpoint it was built from, for its "
                               "architecture (default: s3prl_args' path_or_url, then s3prl's download_dir, then "
                               "the released geometry of wavlm_base / wavlm_base_plus / wavlm_large)")
    from_student = commands.add_parser("from-student", help="nawsv student.pt -> WeSpeaker model_init checkpoint")
    from_student.add_argument("--student", required=True, type=Path, help="stage 3's student.pt")
    from_student.add_argument("--out", required=True, type=Path, help="checkpoint to write (model_init)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from nawsv.utils.cli import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    if args.command == "to-nawsv":
        wespeaker_to_nawsv(args.exp_dir / "config.yaml", args.checkpoint or args.exp_dir / "models" / "avg_model.pt",
                           args.out, args.upstream_ckpt)
    else:
        student_to_model_init(args.student, args.out)
    return 0


if __name__ == "__main__":
    from nawsv.utils.cli import run_main

    raise SystemExit(run_main(main))
