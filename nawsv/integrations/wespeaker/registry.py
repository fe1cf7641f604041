"""Plug nawsv's modules into WeSpeaker's trainer under ``nawsv``-prefixed names, and check a config that uses them.

WeSpeaker's lookups are a mutable dict (front-ends), prefix chains that end in ``exit(1)`` (models) or in a silent
plain Linear (projections), and ``getattr`` on a module (schedulers); ``bin/train.py`` binds ``get_speaker_model``
and ``get_projection`` when it is imported. :func:`register` wraps the two functions wherever a loaded WeSpeaker
module holds them, so any name starting with ``nawsv`` (any case) resolves here -- to nawsv's class, or to an error
listing the valid nawsv names -- and every other name goes to WeSpeaker unchanged.
"""
from __future__ import annotations

import copy
import sys
from typing import Any, Callable

from nawsv.integrations.wespeaker import augment
from nawsv.integrations.wespeaker.modules import (NawsvEcapaTdnn, NawsvHalfCosineLR, NawsvSSLFrontend,
                                                  build_projection)
from nawsv.utils.errors import ConfigError


def nawsv_ecapa_tdnn(**model_args: Any) -> NawsvEcapaTdnn:
    """``NAWSV_ECAPA_TDNN``, with SyncBatchNorm where nawsv's trainer uses it: several processes on GPUs.

    WeSpeaker builds the model after ``init_process_group`` (NCCL on GPUs) and before ``model.cuda()``; on CPUs
    (gloo: the CPU shim) BatchNorm stays per process, as in nawsv, since SyncBatchNorm has no CPU kernel.
    """
    import torch
    import torch.distributed as dist

    model = NawsvEcapaTdnn(**model_args)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and dist.get_backend() == "nccl":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


FRONTENDS: dict[str, type] = {"nawsv_ssl": NawsvSSLFrontend}
MODELS: dict[str, Callable[..., Any]] = {"NAWSV_ECAPA_TDNN": nawsv_ecapa_tdnn}
PROJECTIONS: dict[str, Callable[[dict[str, Any]], Any]] = {"nawsv_aam_intertopk": build_projection}
SCHEDULERS: dict[str, type] = {"NawsvHalfCosineLR": NawsvHalfCosineLR}
_KINDS = {"front-end (dataset_args.frontend)": FRONTENDS, "model": MODELS,
          "projection (projection_args.project_type)": PROJECTIONS, "scheduler": SCHEDULERS}


def is_nawsv_name(name: Any) -> bool:
    return isinstance(name, str) and name.lower().startswith("nawsv")


def lookup(table: dict[str, Any], name: str, kind: str) -> Any:
    """``table[name]``, or an error naming the valid choices (never WeSpeaker's fall-back)."""
    if name not in table:
        raise ConfigError(f"unknown nawsv {kind} {name!r}; choose from {sorted(table)}")
    return table[name]


def register() -> None:
    """Make WeSpeaker's trainer find nawsv's front-end, model, projection and schedule. Idempotent."""
    import wespeaker.bin.train  # noqa: F401 - binds get_speaker_model / get_projection, which are wrapped below
    import wespeaker.frontend as ws_frontend
    import wespeaker.models.projections as ws_projections
    import wespeaker.models.speaker_model as ws_models
    import wespeaker.utils.schedulers as ws_schedulers

    ws_frontend.frontend_class_dict.update(FRONTENDS)
    for name, cls in SCHEDULERS.items():
        setattr(ws_schedulers, name, cls)
    ws_schedulers.__getattr__ = _missing_scheduler          # module __getattr__ (PEP 562): only for absent names
    _wrap(ws_models, "get_speaker_model", lambda name: lookup(MODELS, name, "model"),
          lambda name: is_nawsv_name(name))
    _wrap(ws_projections, "get_projection",
          lambda conf: lookup(PROJECTIONS, conf["project_type"], "projection")(conf),
          lambda conf: is_nawsv_name(conf.get("project_type")))
    augment.install()                                       # nawsv_augment_args: nawsv's augmentation


def _missing_scheduler(name: str) -> Any:
    if is_nawsv_name(name):
        lookup(SCHEDULERS, name, "scheduler")
    raise AttributeError(f"module 'wespeaker.utils.schedulers' has no attribute {name!r}")


def _wrap(module: Any, attr: str, ours: Callable, mine: Callable[[Any], bool]) -> None:
    original = getattr(module, attr)
    if getattr(original, "nawsv_wrapped", False):
        return

    def dispatch(arg: Any) -> Any:
        return ours(arg) if mine(arg) else original(arg)

    dispatch.nawsv_wrapped = True
    dispatch.__doc__ = f"nawsv names first, then WeSpeaker's own {attr}."
    for loaded in list(sys.modules.values()):
        if getattr(loaded, "__name__", "").startswith("wespeaker") and getattr(loaded, attr, None) is original:
            setattr(loaded, attr, dispatch)


def check_names(configs: dict[str, Any]) -> None:
    """Every nawsv name in the config exists (checked before WeSpeaker builds anything)."""
    used = {"front-end (dataset_args.frontend)": configs.get("dataset_args", {}).get("frontend"),
            "model": configs.get("model"),
            "projection (projection_args.project_type)": configs.get("projection_args", {}).get("project_type"),
            "scheduler": configs.get("scheduler")}
    for kind, name in used.items():
        if is_nawsv_name(name):
            lookup(_KINDS[kind], name, kind)


def prepare_config(configs: dict[str, Any]) -> dict[str, Any]:
    """A copy of a WeSpeaker config with what nawsv's modules need filled in and checked.

    Sets ``model_args.num_hidden_states`` from the front-end and ``projection_args.train_label`` (class weights);
    refuses WeSpeaker's feature-level CMVN / SpecAugment on hidden states, which nawsv's model does not expect.
    """
    configs = copy.deepcopy(configs)
    check_names(configs)
    dataset_args = configs.setdefault("dataset_args", {})
    if dataset_args.get("frontend") == "nawsv_ssl":
        for key in ("cmvn", "spec_aug"):
            if dataset_args.get(key, key == "cmvn"):        # WeSpeaker's defaults: cmvn on, spec_aug off
                raise ConfigError(f"dataset_args.{key} must be false with the nawsv_ssl front-end: it returns all "
                                  f"hidden states [B, L+1, T, H], which NAWSV_ECAPA_TDNN weights and normalises "
                                  f"itself; set dataset_args.{key}: false")
        if configs.get("model") not in MODELS:
            raise ConfigError(f"model {configs.get('model')!r} cannot take the nawsv_ssl front-end's hidden states; "
                              f"use one of {sorted(MODELS)}")
        frontend_args = dataset_args.get("nawsv_ssl_args") or {}
        if "init" not in frontend_args:
            raise ConfigError("dataset_args.nawsv_ssl_args.init is missing: a stage-3 student.pt or a pre-trained "
                              "WavLM directory")
        model_args = configs.setdefault("model_args", {})
        if model_args.get("num_hidden_states") is None:
            frontend = NawsvSSLFrontend(sample_rate=dataset_args.get("resample_rate", 16000), **frontend_args)
            model_args["num_hidden_states"] = frontend.num_hidden_states
    projection_args = configs.setdefault("projection_args", {})
    if projection_args.get("project_type") == "nawsv_aam_intertopk" and projection_args.get("class_weights", True):
        projection_args.setdefault("train_label", configs.get("train_label"))
    return configs
