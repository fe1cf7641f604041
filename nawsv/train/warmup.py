"""Phase 1, the NAW-SV warm-up: a frozen teacher on clean speech guides a student with adapters on noisy speech.

Per step: B speakers x 2 utterances; student input [clean u1; noisy u2], teacher input [clean u1; clean u2];
loss = hint (layers 1..L, 0.1 ... 0.1, 1.0) + 0.1 * E-APN (query: student noisy u2; anchors: student clean u1,
teacher u1, teacher u2) with the whole global batch as negatives. Adapters, head and E-APN scalars train first,
the whole student from epoch ``adapter_only_epochs + 1`` (spec §3).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal

import torch

from nawsv.data.augment import AugmentConfig, Augmenter
from nawsv.data.samplers import rank_share, speaker_pair_batches
from nawsv.data.store import UtteranceStore
from nawsv.data.train_sets import WarmupPairs, make_loader
from nawsv.models.config import SSLConfig
from nawsv.train.diagnostics import DiagnosticsConfig
from nawsv.train.distributed import DistContext
from nawsv.train.loop import OptimConfig, RunConfig

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000


@dataclasses.dataclass
class WarmupData:
    """Batch composition and loading (speakers_per_batch is global, split over ranks)."""

    speakers_per_batch: int = 96
    max_utts_per_speaker: int = 500
    crop_seconds: float = 3.0
    num_workers: int = 4
    list_type: Literal["raw", "shard"] = "raw"
    pair_clash: Literal["defer", "drop"] = "defer"   # drop: the released sampler (spec 3.1)

    def __post_init__(self) -> None:
        if self.speakers_per_batch < 2:
            raise ValueError("speakers_per_batch must be >= 2 (E-APN needs negatives)")
        if self.max_utts_per_speaker < 2 or self.crop_seconds <= 0 or self.num_workers < 0:
            raise ValueError("need max_utts_per_speaker >= 2, crop_seconds > 0, num_workers >= 0")


@dataclasses.dataclass
class WarmupLoss:
    """Weights of the two losses (spec §2.8, §3.3)."""

    hint_lambda: float = 0.1               # weight of layers 1..L-1 in the hint loss (layer L has 1.0)
    eapn_weight: float = 0.1
    eapn_init_w: float = 10.0
    eapn_init_b: float = -5.0
    global_negatives: bool = True          # all-gather E-APN embeddings: results independent of the GPU count


def _warmup_optim() -> OptimConfig:
    return OptimConfig(lr=5e-5, lr_min=5e-5, schedule="constant")


@dataclasses.dataclass
class WarmupConfig:
    """Stage 3 (conf/warmup.yaml). Defaults are the paper's VoxCeleb1 values."""

    ssl: SSLConfig = dataclasses.field(default_factory=SSLConfig)
    embed_dim: int = 192
    loss: WarmupLoss = dataclasses.field(default_factory=WarmupLoss)
    data: WarmupData = dataclasses.field(default_factory=WarmupData)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig.warmup)
    optim: OptimConfig = dataclasses.field(default_factory=_warmup_optim)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    epochs: int = 50                        # 50 for VoxCeleb1, 30 for VoxCeleb2
    adapter_only_epochs: int = 9            # epochs 1..9 train adapters + head + E-APN scalars only
    reset_optimizer_at_unfreeze: bool = True   # the original re-created Adam when the whole student unfroze
    teacher_input: Literal["clean", "noisy"] = "clean"   # noisy reproduces the released code's bug (spec §3.2)
    diagnostics: DiagnosticsConfig = dataclasses.field(default_factory=DiagnosticsConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1 or not 0 <= self.adapter_only_epochs <= self.epochs:
            raise ValueError(f"need epochs >= 1 and 0 <= adapter_only_epochs <= epochs, got {self.epochs}, "
                             f"{self.adapter_only_epochs}")
        if self.embed_dim < 1:
            raise ValueError("embed_dim must be >= 1")


class WarmupTask:
    """The warm-up as a task for :class:`nawsv.train.loop.Trainer`."""

    name = "warmup"

    def __init__(self, cfg: WarmupConfig, store: UtteranceStore, augmenter: Augmenter, ctx: DistContext) -> None:
        from nawsv.losses.eapn import EAPNLoss
        from nawsv.losses.hint import HintLoss
        from nawsv.models.heads import WarmupHead
        from nawsv.models.ssl import build_student, build_teacher

        self.cfg = cfg
        self.ctx = ctx
        self.store = store
        if cfg.data.speakers_per_batch % ctx.world_size:
            from nawsv.utils.errors import ConfigError
            raise ConfigError(f"data.speakers_per_batch={cfg.data.speakers_per_batch} must be divisible by the "
                              f"{ctx.world_size} processes")
        self.student = build_student(cfg.ssl).to(ctx.device)
        self.teacher = build_teacher(cfg.ssl).to(ctx.device)
        self.head = WarmupHead(self.student.num_hidden_states, self.student.hidden_size, cfg.embed_dim)
        if ctx.distributed and ctx.device.type == "cuda":
            self.head = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.head)
        self.head.to(ctx.device)
        self.eapn = EAPNLoss(cfg.loss.eapn_init_w, cfg.loss.eapn_init_b, gather=cfg.loss.global_negatives)
        self.eapn.to(ctx.device)
        self.hint = HintLoss(cfg.loss.hint_lambda)
        self.dataset = WarmupPairs(store, augmenter, int(cfg.data.crop_seconds * SAMPLE_RATE), cfg.run.seed)
        self._plans: dict[int, list] = {}

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"student": self.student, "head": self.head, "eapn": self.eapn}

    def configure_epoch(self, epoch: int) -> bool:
        whole = epoch >= self.cfg.adapter_only_epochs
        self.student.set_backbone_trainable(whole)
        for param in self.student.adapter_parameters():
            param.requires_grad_(True)
        self.student.train()
        self.head.train()
        self.teacher.eval()
        if epoch == self.cfg.adapter_only_epochs and epoch > 0:
            log.info("epoch %d: the whole student is trainable from now on", epoch + 1)
            return self.cfg.reset_optimizer_at_unfreeze
        return False

    def _plan(self, epoch: int) -> list:
        if epoch not in self._plans:
            self._plans = {epoch: speaker_pair_batches(self.store.labels, self.cfg.data.speakers_per_batch,
                                                       self.cfg.data.max_utts_per_speaker, self.cfg.run.seed, epoch,
                                                       self.cfg.data.pair_clash)}
        return self._plans[epoch]

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self._plan(epoch))

    def batches(self, epoch: int, start_step: int):
        share = self.cfg.data.speakers_per_batch // self.ctx.world_size
        items = []
        for step, batch in enumerate(self._plan(epoch)[start_step:], start=start_step):
            mine = rank_share(batch, self.ctx.rank, self.ctx.world_size)
            first = step * self.cfg.data.speakers_per_batch + self.ctx.rank * share
            items.append([(epoch, first + i, u1, u2) for i, (u1, u2) in enumerate(mine)])
        return make_loader(self.dataset, items, self.cfg.data.num_workers, self.ctx.device.type == "cuda")

    def training_step(self, batch, generator: torch.Generator, shared: torch.Generator | None = None):
        clean1, noisy2, clean2, _ = (t.to(self.ctx.device, non_blocking=True) for t in batch)
        half = clean1.shape[0]
        student_hs = self.student(torch.cat([clean1, noisy2]), mask=True, generator=generator,
                                  layerdrop_generator=shared)
        teacher_second = clean2 if self.cfg.teacher_input == "clean" else noisy2
        with torch.no_grad():
            teacher_hs = self.teacher(torch.cat([clean1, teacher_second]))
        hint = self.hint(student_hs, teacher_hs)
        student_emb = self.head(student_hs)
        teacher_emb = self.head(teacher_hs)
        eapn = self.eapn(student_emb[half:], [student_emb[:half], teacher_emb[:half], teacher_emb[half:]])
        loss = hint + self.cfg.loss.eapn_weight * eapn
        return loss, {"hint": hint.detach(), "eapn": eapn.detach(), "eapn_w": self.eapn.w.detach().clone(),
                      "eapn_candidates": float(self.eapn.last_num_candidates)}

    def samples_per_step(self) -> int:
        return 2 * self.cfg.data.speakers_per_batch

    def epoch_scalars(self, epoch: int) -> dict[str, float]:
        return {"whole_student": float(epoch >= self.cfg.adapter_only_epochs)}

    def dev_embed(self, wav: torch.Tensor) -> torch.Tensor:
        return self.head(self.student(wav))

    def diagnostics(self, store: UtteranceStore, held_out: list[int], out_dir: Path):
        """Hint distances and clean/noisy cosines on held-out utterances of ``store`` (nawsv.train.diagnostics)."""
        from nawsv.train.diagnostics import WarmupDiagnostics, held_out_audio

        clean, noisy = held_out_audio(store, held_out, self.dataset.crop_samples, self.dataset.augment,
                                      self.cfg.run.seed)
        return WarmupDiagnostics(self.student, self.teacher, self.head, self.hint, clean, noisy,
                                 self.cfg.diagnostics.batch_size, out_dir)

    def finish(self, out_dir: Path, epochs: int) -> None:
        from nawsv.models.ssl import save_encoder

        save_encoder(self.student, out_dir / "student.pt")
        log.info("wrote the warmed-up student (with adapters) to %s", out_dir / "student.pt")
