"""Phase 2, fine-tuning for speaker verification: warmed-up student + ECAPA-TDNN + AAM-softmax with inter-top-k.

The SSL model (adapters included) is frozen and in eval mode for the first ``frozen_ssl_epochs`` epochs, then
trained jointly with time masking; the LR follows a half cosine; the last ``large_margin_epochs`` epochs use
6-s crops and a larger AAM margin, which really changes the margin here (the original set it on the DDP
wrapper, spec §4.3). The final model is the average of the last ``average_last`` epoch checkpoints -- model
selection never looks at test trials.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from nawsv.data.augment import AugmentConfig, Augmenter
from nawsv.data.samplers import rank_share, shuffled_batches
from nawsv.data.store import UtteranceStore
from nawsv.data.train_sets import AugmentedCrops, make_loader
from nawsv.losses.aam import WEIGHT_NORMS
from nawsv.models.config import SSLConfig
from nawsv.train import checkpoint as ckpt
from nawsv.train.distributed import DistContext
from nawsv.train.loop import OptimConfig, RunConfig
from nawsv.utils.errors import ConfigError, ExperimentError

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000


@dataclasses.dataclass
class FinetuneData:
    """Batching and loading (batch_size is global, split over ranks)."""

    batch_size: int = 24
    crop_seconds: float = 3.0
    num_workers: int = 4
    list_type: Literal["raw", "shard"] = "raw"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.crop_seconds <= 0 or self.num_workers < 0:
            raise ValueError("need batch_size >= 1, crop_seconds > 0, num_workers >= 0")


@dataclasses.dataclass
class BackendConfig:
    """The speaker back-end on the SSL hidden states."""

    name: str = "ecapa_tdnn_small"
    channels: int = 512
    embed_dim: int = 192


@dataclasses.dataclass
class AAMConfig:
    """AAM-softmax with the inter-top-k penalty (spec §2.8)."""

    margin: float = 0.2
    scale: float = 30.0
    topk: int = 5
    topk_margin: float = 0.1
    class_weights: bool = True             # inverse-frequency weighted CE, as the original
    fix_large_angle: bool = True           # ArcFace fallback when theta + m > pi; false: the released AAM (none)
    class_weight_norm: Literal["global", "per_rank"] = "global"   # per_rank = released DDP (depends on GPU count)

    def __post_init__(self) -> None:
        if self.class_weight_norm not in WEIGHT_NORMS:
            raise ValueError(f"class_weight_norm must be one of {list(WEIGHT_NORMS)}, got {self.class_weight_norm!r}")


def _finetune_ssl() -> SSLConfig:
    return SSLConfig(mask_time_prob=0.05, mask_time_length=10, mask_feature_prob=0.0)


def _finetune_optim() -> OptimConfig:
    return OptimConfig(lr=5e-5, lr_min=5e-7, schedule="half_cosine")


@dataclasses.dataclass
class FinetuneConfig:
    """Stage 4 (conf/finetune.yaml). Defaults are the paper's values."""

    ssl: SSLConfig = dataclasses.field(default_factory=_finetune_ssl)
    backend: BackendConfig = dataclasses.field(default_factory=BackendConfig)
    loss: AAMConfig = dataclasses.field(default_factory=AAMConfig)
    data: FinetuneData = dataclasses.field(default_factory=FinetuneData)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    optim: OptimConfig = dataclasses.field(default_factory=_finetune_optim)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    epochs: int = 27
    frozen_ssl_epochs: int = 20            # SSL (incl. adapters) frozen and in eval mode for epochs 1..20
    large_margin_epochs: int = 2           # the last epochs: 6-s crops and the large margin
    large_margin: float = 0.4
    large_margin_crop_seconds: float = 6.0
    average_last: int = 2                  # avg_model.pt = mean of the last N epoch checkpoints

    def __post_init__(self) -> None:
        if self.epochs < 1 or not 0 <= self.frozen_ssl_epochs <= self.epochs:
            raise ValueError("need epochs >= 1 and 0 <= frozen_ssl_epochs <= epochs")
        if not 0 <= self.large_margin_epochs <= self.epochs:
            raise ValueError("need 0 <= large_margin_epochs <= epochs")
        if not 1 <= self.average_last <= self.epochs:
            raise ValueError("need 1 <= average_last <= epochs")
        if self.run.keep_checkpoints and self.run.keep_checkpoints < self.average_last:
            raise ValueError(f"run.keep_checkpoints={self.run.keep_checkpoints} must be >= average_last="
                             f"{self.average_last} (or 0 to keep all), or the averaged checkpoints are deleted")


class FinetuneTask:
    """Fine-tuning as a task for :class:`nawsv.train.loop.Trainer`."""

    name = "finetune"

    def __init__(self, cfg: FinetuneConfig, store: UtteranceStore, augmenter: Augmenter, ctx: DistContext,
                 init_student: Path | None) -> None:
        from nawsv.losses.aam import AAMSoftmax
        from nawsv.models.registry import build_backend
        from nawsv.models.ssl import build_student, build_student_from_state, load_encoder_state

        self.cfg = cfg
        self.ctx = ctx
        self.store = store
        if cfg.data.batch_size % ctx.world_size:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be divisible by the {ctx.world_size} "
                              f"processes")
        if init_student is not None:
            self.ssl = build_student_from_state(load_encoder_state(init_student), cfg.ssl)
            log.info("SSL model: the warmed-up student from %s", init_student)
        else:
            self.ssl = build_student(dataclasses.replace(cfg.ssl, zero_init_adapters=True))
            log.info("SSL model: no warm-up (baseline): the pre-trained model, adapters zero-initialised so the "
                     "model starts as the plain pre-trained network")
        self.ssl.to(ctx.device)
        self.backend_kwargs = {"num_hidden_states": self.ssl.num_hidden_states, "input_dim": self.ssl.hidden_size,
                               "channels": cfg.backend.channels, "embed_dim": cfg.backend.embed_dim}
        self.backend = build_backend(cfg.backend.name, **self.backend_kwargs)
        if ctx.distributed and ctx.device.type == "cuda":
            self.backend = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.backend)
        self.backend.to(ctx.device)
        counts = np.bincount(store.labels, minlength=len(store.speaker_ids)).astype(np.float64)
        weights = torch.tensor(counts.sum() / counts, dtype=torch.float32) if cfg.loss.class_weights else None
        self.aam = AAMSoftmax(cfg.backend.embed_dim, len(store.speaker_ids), margin=cfg.loss.margin,
                              scale=cfg.loss.scale, topk=cfg.loss.topk, topk_margin=cfg.loss.topk_margin,
                              class_weights=weights, weight_norm=cfg.loss.class_weight_norm,
                              fix_large_angle=cfg.loss.fix_large_angle).to(ctx.device)
        self.dataset = AugmentedCrops(store, augmenter, cfg.run.seed)
        self.ssl_frozen = True

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"ssl": self.ssl, "backend": self.backend, "aam": self.aam}

    def _large_margin(self, epoch: int) -> bool:
        return epoch >= self.cfg.epochs - self.cfg.large_margin_epochs

    def configure_epoch(self, epoch: int) -> bool:
        self.ssl_frozen = epoch < self.cfg.frozen_ssl_epochs
        self.ssl.requires_grad_(not self.ssl_frozen)
        self.ssl.train(not self.ssl_frozen)
        self.backend.train()
        self.aam.train()
        self.aam.set_margin(self.cfg.large_margin if self._large_margin(epoch) else self.cfg.loss.margin)
        if epoch == self.cfg.frozen_ssl_epochs and epoch > 0:
            log.info("epoch %d: the SSL model is trainable from now on", epoch + 1)
        return False

    def crop_samples(self, epoch: int) -> int:
        seconds = self.cfg.large_margin_crop_seconds if self._large_margin(epoch) else self.cfg.data.crop_seconds
        return int(seconds * SAMPLE_RATE)

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.store) // self.cfg.data.batch_size

    def batches(self, epoch: int, start_step: int):
        plan = shuffled_batches(len(self.store), self.cfg.data.batch_size, self.cfg.run.seed, epoch)
        share = self.cfg.data.batch_size // self.ctx.world_size
        crop = self.crop_samples(epoch)
        items = []
        for step, batch in enumerate(plan[start_step:], start=start_step):
            first = step * self.cfg.data.batch_size + self.ctx.rank * share
            mine = rank_share(batch, self.ctx.rank, self.ctx.world_size)
            items.append([(epoch, first + i, utt, crop) for i, utt in enumerate(mine)])
        return make_loader(self.dataset, items, self.cfg.data.num_workers, self.ctx.device.type == "cuda")

    def training_step(self, batch, generator: torch.Generator, shared: torch.Generator | None = None):
        wav, labels = (t.to(self.ctx.device, non_blocking=True) for t in batch)
        if self.ssl_frozen:
            with torch.no_grad():
                hidden = self.ssl(wav)
        else:
            hidden = self.ssl(wav, mask=True, generator=generator, layerdrop_generator=shared)
        loss, accuracy = self.aam(self.backend(hidden), labels)
        return loss, {"accuracy": accuracy.detach()}

    def samples_per_step(self) -> int:
        return self.cfg.data.batch_size

    def epoch_scalars(self, epoch: int) -> dict[str, float]:
        return {"margin": self.aam.margin, "crop_seconds": self.crop_samples(epoch) / SAMPLE_RATE,
                "ssl_frozen": float(epoch < self.cfg.frozen_ssl_epochs)}

    def dev_embed(self, wav: torch.Tensor) -> torch.Tensor:
        return self.backend(self.ssl(wav))

    def finish(self, out_dir: Path, epochs: int) -> None:
        from nawsv.models.speaker import save_speaker_model

        paths = [out_dir / "checkpoints" / ckpt.epoch_checkpoint_name(e)
                 for e in range(epochs - self.cfg.average_last + 1, epochs + 1)]
        states = []
        for path in paths:
            if ckpt.verify_checkpoint(path) is not None:
                raise ExperimentError(f"cannot average: {path} is missing or damaged ({ckpt.verify_checkpoint(path)})")
            states.append(ckpt.load_checkpoint(path)["modules"])
        self.ssl.load_state_dict(ckpt.average_state_dicts([s["ssl"] for s in states]))
        self.backend.load_state_dict(ckpt.average_state_dicts([s["backend"] for s in states]))
        save_speaker_model(out_dir / "avg_model.pt", self.ssl, self.cfg.backend.name, self.backend_kwargs,
                           self.backend, averaged=[p.name for p in paths])
        log.info("wrote %s (average of %s)", out_dir / "avg_model.pt", ", ".join(p.name for p in paths))
