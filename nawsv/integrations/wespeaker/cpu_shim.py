"""WeSpeaker's GPU-only entry points on a CPU: a shim that redirects the device calls and nothing else.

``wespeaker/bin/train.py`` (and ``bin/extract.py``) choose a GPU unconditionally: ``torch.cuda.set_device``,
``dist.init_process_group(backend='nccl')``, ``dist.barrier(device_ids=[gpu])``, ``model.cuda()`` and
``torch.device("cuda")``. Inside :func:`cpu_devices` those five calls, as seen by the WeSpeaker module handed in,
resolve to the CPU and to gloo; the module's code itself is not touched, and every other call (data, model,
loss, optimiser, schedules, checkpoints) is WeSpeaker's own. It is what ``--cpu True`` of
:mod:`nawsv.integrations.wespeaker.train` runs, and how the tests run WeSpeaker's real ``train()`` here.
"""
from __future__ import annotations

import contextlib
import logging
import os
import types
from typing import Any, Iterator

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class _Facade(types.ModuleType):
    """A module seen through a few replaced attributes; every other attribute is the module's own."""

    def __init__(self, wrapped: types.ModuleType, **replaced: Any) -> None:
        super().__init__(wrapped.__name__)
        self._wrapped = wrapped
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


class CpuDevices:
    """The replacements; ``requested`` keeps the GPU ids WeSpeaker asked for (one per ``set_device`` call)."""

    def __init__(self) -> None:
        self.requested: list[int] = []
        self.started_group = False

    def set_device(self, device: Any) -> None:
        self.requested.append(int(getattr(device, "index", device) or 0))
        log.info("cpu shim: torch.cuda.set_device(%s) -> the CPU", device)

    @staticmethod
    def device(spec: Any, *args: Any) -> torch.device:
        """``torch.device("cuda[:n]")`` -> the CPU; any other spec unchanged."""
        return torch.device("cpu") if str(spec).startswith("cuda") else torch.device(spec, *args)

    def init_process_group(self, backend: str | None = None, **kwargs: Any) -> None:
        """NCCL -> gloo. A lone process (no torchrun: no MASTER_PORT) gets an in-memory store, so no port clashes."""
        if backend == "nccl":
            backend = "gloo"
        if int(os.environ.get("WORLD_SIZE", "1")) == 1 and "MASTER_PORT" not in os.environ \
                and "store" not in kwargs and "init_method" not in kwargs:
            kwargs.update(store=dist.HashStore(), rank=0, world_size=1)
        dist.init_process_group(backend=backend, **kwargs)
        self.started_group = True

    @staticmethod
    def barrier(*args: Any, device_ids: Any = None, **kwargs: Any) -> Any:
        """gloo has no device to wait on: the barrier without ``device_ids``."""
        return dist.barrier(*args, **kwargs)


def _module_on_cpu(module: torch.nn.Module, device: Any = None) -> torch.nn.Module:
    return module


@contextlib.contextmanager
def cpu_devices(*wespeaker_modules: types.ModuleType) -> Iterator[CpuDevices]:
    """Within the block, the given WeSpeaker modules' ``torch`` and ``dist`` resolve device calls to the CPU.

    ``nn.Module.cuda`` returns the module unchanged meanwhile (``model.cuda()`` is a method call, not a module
    attribute). A process group started inside is destroyed on the way out, so the block can run again.
    """
    shim = CpuDevices()
    cuda = _Facade(torch.cuda, set_device=shim.set_device)
    facades = {"torch": _Facade(torch, device=shim.device, cuda=cuda),
               "dist": _Facade(dist, init_process_group=shim.init_process_group, barrier=shim.barrier)}
    saved: list[tuple[Any, str, Any]] = [(torch.nn.Module, "cuda", torch.nn.Module.cuda)]
    for module in wespeaker_modules:
        saved += [(module, name, getattr(module, name)) for name in facades if hasattr(module, name)]
    try:
        torch.nn.Module.cuda = _module_on_cpu
        for module in wespeaker_modules:
            for name, facade in facades.items():
                if hasattr(module, name):
                    setattr(module, name, facade)
        yield shim
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        if shim.started_group and dist.is_initialized():
            dist.destroy_process_group()
