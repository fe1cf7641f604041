"""The one training loop shared by the warm-up and fine-tuning tasks.

The loop owns what both phases have in common: epochs and the LR schedule, the optimiser, gradient
averaging across ranks (overlapped with backward: :mod:`nawsv.train.grad_sync`), bf16 autocast on CUDA,
skipping non-finite steps, checkpoints and exact resumption, TensorBoard and the progress bar. A task supplies
the model, the batches and the loss.

Exact resumption rests on one rule: every random draw of step ``s`` of epoch ``e`` on rank ``r`` comes from
generators seeded with (seed, rank, epoch, step), and the draws every rank must make alike (LayerDrop) from one
seeded with (seed, epoch, step) -- the batches themselves are a pure function of (seed, epoch) -- so a
checkpoint needs no RNG state and a resumed run repeats the uninterrupted one bit for bit on CPU.

A step is skipped on every rank when the loss or the averaged gradient norm is NaN/inf on any rank; the skipped
step's forward has already moved BatchNorm running statistics, so they are put back. Resumption is decided by
rank 0 (which checkpoint, or none) and checked: every rank must read the same file, and rank 0's parameters and
buffers are broadcast after the restore, so ranks never start from different weights.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Protocol

import torch

from nawsv.train import checkpoint as ckpt
from nawsv.train.dev_eval import DevEvaluator
from nawsv.formats.dev_metrics import read_dev_metrics, record_dev_metrics
from nawsv.train.distributed import (DistContext, all_ranks_true, broadcast_module_states, gather_objects,
                                     on_rank_zero)
from nawsv.train.grad_sync import GradientSync
from nawsv.train.schedule import learning_rate
from nawsv.utils.errors import ExperimentError, NawsvError
from nawsv.utils.seeding import stable_seed

log = logging.getLogger(__name__)


class TrainingError(NawsvError):
    """Training cannot go on (e.g. too many non-finite steps in a row)."""


@dataclasses.dataclass
class OptimConfig:
    """Adam and the LR schedule (``schedule``: constant | half_cosine, stepped per epoch)."""

    lr: float = 5e-5
    lr_min: float = 5e-5
    schedule: Literal["constant", "half_cosine"] = "constant"
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip_norm: float = 0.0          # 0 disables clipping (the original did not clip)

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.lr_min < 0 or self.lr_min > self.lr:
            raise ValueError(f"need 0 <= lr_min <= lr and lr > 0, got lr={self.lr}, lr_min={self.lr_min}")
        if self.weight_decay < 0 or self.grad_clip_norm < 0:
            raise ValueError("weight_decay and grad_clip_norm must be >= 0")


@dataclasses.dataclass
class RunConfig:
    """Seeds, precision, logging and checkpoint cadence."""

    seed: int = 1
    precision: Literal["fp32", "bf16"] = "bf16"   # bf16 autocast applies on CUDA only; CPU runs fp32
    log_every_steps: int = 10
    checkpoint_every_steps: int = 0               # extra mid-epoch checkpoints (0: epoch ends only)
    keep_checkpoints: int = 3                     # newest epoch checkpoints kept (0: all)
    max_nonfinite_in_row: int = 20                # consecutive skipped steps before the run stops
    grad_spike_factor: float = 10.0               # warn when the gradient norm exceeds this x its running mean

    def __post_init__(self) -> None:
        if self.log_every_steps < 1 or self.checkpoint_every_steps < 0 or self.keep_checkpoints < 0:
            raise ValueError("log_every_steps must be >= 1; checkpoint_every_steps, keep_checkpoints >= 0")
        if self.max_nonfinite_in_row < 1:
            raise ValueError("max_nonfinite_in_row must be >= 1")


class Task(Protocol):
    """What a training phase provides to the loop."""

    name: str

    def modules(self) -> dict[str, torch.nn.Module]:
        """Every module whose state is checkpointed (trainable or not)."""

    def configure_epoch(self, epoch: int) -> bool:
        """Set trainability, train/eval modes, margins and crops; True when the optimiser must start afresh."""

    def steps_in_epoch(self, epoch: int) -> int:
        """Number of optimiser steps in ``epoch``."""

    def batches(self, epoch: int, start_step: int) -> Iterable[Any]:
        """The batches of ``epoch`` for this rank, from ``start_step`` on."""

    def training_step(self, batch: Any, generator: torch.Generator,
                      shared: torch.Generator) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """Loss (scalar, fp32) and logged values for one batch (0-d tensors are read only when logged).

        ``generator`` draws what differs per rank (masks), ``shared`` what every rank draws alike (LayerDrop).
        """

    def samples_per_step(self) -> int:
        """Utterances consumed per global step (for throughput)."""

    def epoch_scalars(self, epoch: int) -> dict[str, float]:
        """Per-epoch values worth logging (e.g. the AAM margin)."""

    def finish(self, out_dir: Path, epochs: int) -> None:
        """Write the phase's final artefact (rank 0 only)."""

    def dev_embed(self, wav: torch.Tensor) -> torch.Tensor:
        """Speaker embeddings of waveforms [B, T] for the dev evaluation (modules already in eval mode)."""


def autocast_dtype(precision: str, device: torch.device, capability: tuple[int, int] | None = None) -> torch.dtype | None:
    """bf16 on CUDA devices with native bf16 (compute capability >= 8.0); None (fp32) otherwise, said once."""
    if precision != "bf16" or device.type != "cuda":
        return None
    major, minor = capability or torch.cuda.get_device_capability(device)
    if major < 8:
        log.warning("run.precision bf16: this GPU (compute capability %d.%d) has no native bf16; training in fp32",
                    major, minor)
        return None
    return torch.bfloat16


class Trainer:
    """Runs a task for ``epochs`` epochs in ``out_dir`` (checkpoints under ``out_dir/checkpoints``)."""

    def __init__(self, task: Task, epochs: int, optim: OptimConfig, run: RunConfig, out_dir: str | Path,
                 ctx: DistContext, dev: DevEvaluator | None = None,
                 diagnostics: Callable[[int], dict[str, float]] | None = None) -> None:
        self.task = task
        self.epochs = epochs
        self.optim_cfg = optim
        self.run_cfg = run
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.ctx = ctx
        self.dev = dev
        self.diagnostics = diagnostics       # on every rank or none; rank 0's is called (epoch -> values)
        self.parameters = [p for m in task.modules().values() for p in m.parameters()]
        self.optimizer = self._new_optimizer()
        self.grad_sync = GradientSync(self.parameters, ctx.world_size)
        self.nonfinite_total = 0
        self.nonfinite_in_row = 0
        self.global_step = 0
        self.grad_norm_mean: float | None = None
        self.generator = torch.Generator()       # CPU: masks equal on any device, no tiny kernels per span
        self.shared_generator = torch.Generator()   # the same on every rank (LayerDrop)
        self.autocast_dtype = autocast_dtype(run.precision, ctx.device)
        self.writer = None

    def _new_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.optim_cfg
        return torch.optim.Adam(self.parameters, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)

    def _state(self, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        return {"task": self.task.name, "epoch": epoch, "step_in_epoch": step_in_epoch,
                "global_step": self.global_step,
                "modules": {name: m.state_dict() for name, m in self.task.modules().items()},
                "optimizer": self.optimizer.state_dict(),
                "counters": {"nonfinite_total": self.nonfinite_total, "nonfinite_in_row": self.nonfinite_in_row,
                             "grad_norm_mean": self.grad_norm_mean}}

    def _restore(self, path: Path) -> tuple[int, int]:
        problem = None
        try:
            state = ckpt.load_checkpoint(path, map_location=self.ctx.device)
        except NawsvError as exc:
            problem = exc
        if not all_ranks_true(problem is None, self.ctx.device):
            raise problem or ExperimentError(
                f"another rank cannot read checkpoint {path}, chosen by rank 0 (see its log); the experiment "
                f"directory must be on a filesystem that every node sees")
        digests = gather_objects(ckpt.recorded_digest(path))
        if len(set(digests)) > 1:
            raise ExperimentError(f"the ranks read different versions of {path} (sha256 per rank: "
                                  f"{', '.join(str(d)[:12] for d in digests)}); the experiment directory must be one "
                                  f"shared directory, not node-local copies or a stale NFS cache")
        if state.get("task") != self.task.name:
            raise ExperimentError(f"{path} is a {state.get('task')!r} checkpoint, not {self.task.name!r}")
        modules = self.task.modules()
        if set(state["modules"]) != set(modules):
            raise ExperimentError(f"{path} holds modules {sorted(state['modules'])}, expected {sorted(modules)}")
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        broadcast_module_states(modules.values())
        self.optimizer.load_state_dict(state["optimizer"])
        counters = state["counters"]
        self.nonfinite_total = counters["nonfinite_total"]
        self.nonfinite_in_row = counters["nonfinite_in_row"]
        self.grad_norm_mean = counters["grad_norm_mean"]
        self.global_step = state["global_step"]
        log.info("resumed from %s (epoch %d, step %d)", path, state["epoch"], state["step_in_epoch"])
        return state["epoch"], state["step_in_epoch"]

    def _save(self, name: str, epoch: int, step_in_epoch: int) -> None:
        """Rank 0 writes; a refusal there (e.g. non-finite weights) stops every rank instead of hanging them."""
        def write() -> None:
            ckpt.save_checkpoint(self.ckpt_dir / name, self._state(epoch, step_in_epoch))
            ckpt.prune_checkpoints(self.ckpt_dir, self.run_cfg.keep_checkpoints)
        on_rank_zero(write, f"writing checkpoint {name}")

    def _start(self, resume: str) -> tuple[int, int]:
        """Rank 0 alone looks at the checkpoint directory; every rank follows its decision."""
        if resume == "never":
            existing = on_rank_zero(lambda: bool(ckpt.list_checkpoints(self.ckpt_dir)), "listing checkpoints", True)
            if existing:
                raise ExperimentError(f"{self.ckpt_dir} already holds checkpoints and --resume never was given; "
                                      f"use --resume auto to continue, or another experiment directory")
            return 0, 0
        if resume == "auto":
            def latest() -> str | None:     # a newer-format checkpoint raises here, on rank 0 alone
                path = ckpt.latest_good_checkpoint(self.ckpt_dir)
                return None if path is None else path.name
            name = on_rank_zero(latest, "looking for checkpoints", share=True)   # each rank opens it in its own view
            return self._restore(self.ckpt_dir / name) if name else (0, 0)
        return self._restore(Path(resume))

    def _autocast(self):
        enabled = self.autocast_dtype is not None
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                              enabled=enabled)

    def _batchnorm_buffers(self) -> list[torch.Tensor]:
        """Running statistics that a forward in train mode updates (restored when its step is skipped)."""
        return [buffer for module in self.task.modules().values() for sub in module.modules()
                if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and sub.training
                for buffer in (sub.running_mean, sub.running_var, sub.num_batches_tracked) if buffer is not None]

    def _seed_step(self, epoch: int, step: int) -> None:
        seed = self.run_cfg.seed
        torch.manual_seed(stable_seed(seed, "step", self.ctx.rank, epoch, step))
        self.generator.manual_seed(stable_seed(seed, "mask", self.ctx.rank, epoch, step))
        self.shared_generator.manual_seed(stable_seed(seed, "shared", epoch, step))

    def _optimizer_step(self, loss: torch.Tensor, epoch: int, step: int) -> tuple[float, float] | None:
        """Backward, average, clip and step; returns (gradient norm, loss), or None when the step was skipped.

        Every rank agrees on skipping: the loss and the norm of the averaged gradients must be finite everywhere
        (a finite loss can still give inf/NaN gradients, and clipping an inf norm would write NaN into weights).
        Both verdicts travel with the gradients (:class:`GradientSync`): the step reads the device once.
        """
        result = self.grad_sync.backward(loss)
        norm = result.norm
        what = "gradient" if result.losses_finite else "loss"
        if not (result.losses_finite and math.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            self.nonfinite_in_row += 1
            log.warning("non-finite %s at epoch %d step %d: step skipped (%d in a row, %d in total)",
                        what, epoch + 1, step, self.nonfinite_in_row, self.nonfinite_total)
            if self.nonfinite_in_row >= self.run_cfg.max_nonfinite_in_row:
                raise TrainingError(f"{self.nonfinite_in_row} non-finite steps in a row (epoch {epoch + 1}, step "
                                    f"{step}); lower the learning rate or check the data. Checkpoints in "
                                    f"{self.ckpt_dir} are untouched")
            return None
        self.nonfinite_in_row = 0
        clip = self.optim_cfg.grad_clip_norm
        if clip and norm > clip:
            with torch.no_grad():
                for param in self.parameters:
                    if param.grad is not None:
                        param.grad.mul_(clip / (norm + 1e-6))
        if self.grad_norm_mean is not None and norm > self.run_cfg.grad_spike_factor * self.grad_norm_mean:
            log.warning("gradient norm spike at epoch %d step %d: %.3g (running mean %.3g)",
                        epoch + 1, step, norm, self.grad_norm_mean)
        self.grad_norm_mean = norm if self.grad_norm_mean is None else 0.98 * self.grad_norm_mean + 0.02 * norm
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, result.loss

    def _open_writer(self) -> None:
        if self.ctx.is_main and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    def _log_scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def fit(self, resume: str = "auto") -> None:
        """Train from scratch or from the latest good checkpoint to ``self.epochs`` epochs."""
        from nawsv.utils.progress import progress_bar

        start_epoch, start_step = self._start(resume)
        self._open_writer()
        try:
            if start_epoch == 0 and start_step == 0:
                self._diagnose(0)
            elif start_step == 0:
                self._evaluate(start_epoch - 1, missing_only=True)   # a failed evaluation of the saved epoch
            for epoch in range(start_epoch, self.epochs):
                fresh = self.task.configure_epoch(epoch)
                if fresh and start_step == 0 and epoch > 0:
                    self.optimizer = self._new_optimizer()
                    log.info("epoch %d: optimiser re-created (trainable set changed)", epoch + 1)
                lr = learning_rate(epoch, self.epochs, self.optim_cfg.lr, self.optim_cfg.lr_min,
                                   self.optim_cfg.schedule)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self._run_epoch(epoch, start_step, lr, progress_bar)
                start_step = 0
                self._save(ckpt.epoch_checkpoint_name(epoch + 1), epoch + 1, 0)   # before anything that may fail
                self._evaluate(epoch)
                self._diagnose(epoch + 1)
            on_rank_zero(lambda: self.task.finish(self.out_dir, self.epochs), "writing the final model")
        finally:
            if self.writer is not None:
                self.writer.close()

    def _diagnose(self, epoch: int) -> None:
        """Task diagnostics before training (epoch 0) and after every epoch, logged under diagnostics/."""
        def diagnose() -> None:
            self._log_scalars({f"diagnostics/{k}": v for k, v in self.diagnostics(epoch).items()}, epoch)
        if self.diagnostics is not None:
            on_rank_zero(diagnose, "computing the diagnostics")

    def _evaluate(self, epoch: int, missing_only: bool = False) -> None:
        """Score the dev trials on rank 0 (monitoring only); modules return to their training modes after.

        ``missing_only``: only when ``dev_metrics.tsv`` lacks the epoch (its evaluation failed after the save).
        """
        if self.dev is not None:
            on_rank_zero(lambda: self._evaluate_here(epoch, missing_only), "evaluating the dev trials")

    def _evaluate_here(self, epoch: int, missing_only: bool) -> None:
        if missing_only and any(int(row["epoch"]) == epoch + 1 for row in read_dev_metrics(self.out_dir)):
            return
        modules = self.task.modules().values()
        modes = [m.training for m in modules]
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False   # every dev utterance has its own length: no autotuning each
        for module in modules:
            module.eval()
        try:
            with self._autocast():
                values = self.dev(self.task.dev_embed, self.ctx.device)
        finally:
            torch.backends.cudnn.benchmark = benchmark
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)
        self._log_scalars({f"dev/{k}": v for k, v in values.items()}, epoch + 1)
        record_dev_metrics(self.out_dir, epoch + 1, self.dev.name, values)
        log.info("epoch %d/%d dev (%s): %s", epoch + 1, self.epochs, self.dev.name,
                 ", ".join(f"{k} {v:.4f}" for k, v in values.items()))

    def _run_epoch(self, epoch: int, start_step: int, lr: float, progress_bar) -> None:
        steps = self.task.steps_in_epoch(epoch)
        scalars = {f"epoch/{k}": v for k, v in self.task.epoch_scalars(epoch).items()} | {"epoch/lr": lr}
        self._log_scalars(scalars, epoch + 1)
        log.info("epoch %d/%d: %d steps, lr %.3g%s", epoch + 1, self.epochs, steps, lr,
                 "".join(f", {k} {v:.3g}" for k, v in self.task.epoch_scalars(epoch).items()))
        sums: dict[str, float] = {}
        count = 0
        epoch_sums: dict[str, float] = {}
        epoch_count = 0
        epoch_start = tick = time.perf_counter()
        bar = progress_bar(total=steps, initial=start_step, desc=f"{self.task.name} epoch {epoch + 1}",
                           disable=not self.ctx.is_main)
        every = self.run_cfg.checkpoint_every_steps
        batchnorm = self._batchnorm_buffers()
        for step, batch in enumerate(self.task.batches(epoch, start_step), start=start_step):
            self._seed_step(epoch, step)
            saved = [buffer.clone() for buffer in batchnorm]
            with self._autocast():
                loss, values = self.task.training_step(batch, self.generator, self.shared_generator)
            stepped = self._optimizer_step(loss, epoch, step)
            if stepped is None:
                with torch.no_grad():
                    for buffer, value in zip(batchnorm, saved, strict=True):
                        buffer.copy_(value)
            self.global_step += 1
            if stepped is not None:
                values = {"loss": stepped[1], **values, "grad_norm": stepped[0]}
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                    epoch_sums[key] = epoch_sums.get(key, 0.0) + value
                count += 1
                epoch_count += 1
            if (step + 1) % self.run_cfg.log_every_steps == 0 or step + 1 == steps:
                elapsed = time.perf_counter() - tick
                rate = self.run_cfg.log_every_steps * self.task.samples_per_step() / max(elapsed, 1e-9)
                tick = time.perf_counter()
                if count:
                    means = {k: float(v) / count for k, v in sums.items()}
                    self._log_scalars({f"train/{k}": v for k, v in means.items()} |
                                      {"train/lr": lr, "train/samples_per_s": rate,
                                       "train/nonfinite_total": self.nonfinite_total}, self.global_step)
                    bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2g}", sps=f"{rate:.1f}")
                    log.debug("epoch %d step %d: %s", epoch + 1, step + 1,
                              ", ".join(f"{k} {v:.4g}" for k, v in means.items()))
                sums, count = {}, 0
            bar.update(1)
            if every and (step + 1) % every == 0 and step + 1 < steps:
                self._save(ckpt.step_checkpoint_name(epoch, step + 1), epoch, step + 1)
        bar.close()
        done = steps - start_step
        rate = done * self.task.samples_per_step() / max(time.perf_counter() - epoch_start, 1e-9)
        means = {k: float(v) / max(epoch_count, 1) for k, v in epoch_sums.items()}
        self._log_scalars({f"epoch/{k}": v for k, v in means.items()} | {"epoch/samples_per_s": rate}, epoch + 1)
        log.info("epoch %d/%d done: %s; %.1f samples/s%s", epoch + 1, self.epochs,
                 ", ".join(f"{k} {v:.4f}" for k, v in means.items() if k != "grad_norm"), rate,
                 f"; {self.nonfinite_total} non-finite step(s) skipped so far" if self.nonfinite_total else "")
