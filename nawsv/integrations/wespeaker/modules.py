"""NAW-SV's phase-2 pieces shaped to the contracts of WeSpeaker's trainer (``bin/train.py``, ``utils/executor.py``).

Each class wraps nawsv's own module without changing what it computes, so a model trained by WeSpeaker's
executor is nawsv's model: the front-end is nawsv's SSL student, the speaker model is nawsv's ECAPA-TDNN (with the
learnable hidden-state weighting), the projection is nawsv's AAM + inter-top-k loss, and the LR schedule is
nawsv's half cosine. Nothing here imports WeSpeaker, so the contracts are tested in the core environment;
:mod:`nawsv.integrations.wespeaker.registry` plugs them into WeSpeaker.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from nawsv.losses.aam import AAMSoftmax, inverse_frequency_weights
from nawsv.models.config import FRAME_STRIDE, SSLConfig, num_frames
from nawsv.models.ecapa import EcapaTdnn
from nawsv.models.ssl import SSLEncoder, build_student, build_student_from_state, load_encoder_state
from nawsv.train.schedule import learning_rate
from nawsv.utils.errors import ConfigError

SAMPLE_RATE = 16000
FRAME_MS = FRAME_STRIDE * 1000 // SAMPLE_RATE          # 20 ms: what WeSpeaker's crop and filter arithmetic needs


def build_ssl(init: str, masking: dict[str, Any]) -> SSLEncoder:
    """The student from a stage-3 ``student.pt`` (strict) or a pre-trained WavLM dir (adapters zero: the plain model).

    ``masking`` holds phase 2's SSLConfig masking/LayerDrop options, applied in both cases.
    """
    path = Path(init)
    if path.is_file():
        state = load_encoder_state(path)
        saved = state.get("ssl_config", {}) if isinstance(state, dict) else {}
        options = {"adapter_dim": saved["adapter_dim"], **masking} if "adapter_dim" in saved else masking
        return build_student_from_state(state, _masking_config(options, None))
    if path.is_dir():
        return build_student(dataclasses.replace(_masking_config(masking, str(path)), zero_init_adapters=True))
    raise ConfigError(f"nawsv_ssl_args.init: {init} is neither a nawsv student file (stage 3's student.pt) nor a "
                      f"pre-trained WavLM directory; point it at one of them")


def _masking_config(masking: dict[str, Any], pretrained: str | None) -> SSLConfig:
    """Phase-2 SSLConfig defaults (time masks 0.05 / 10, no channel masks, no LayerDrop) overridden by ``masking``.

    LayerDrop defaults to 0 here, unlike nawsv's trainer: WeSpeaker wraps the model in DistributedDataParallel
    without ``find_unused_parameters``, and a skipped layer leaves parameters without gradient, which stops it.
    """
    base = dict(mask_time_prob=0.05, mask_time_length=10, mask_feature_prob=0.0, layerdrop=0.0)
    try:
        return SSLConfig(pretrained=pretrained, **{**base, **masking})
    except TypeError as exc:
        valid = sorted(f.name for f in dataclasses.fields(SSLConfig) if f.name != "pretrained")
        raise ConfigError(f"nawsv_ssl_args: {exc}; valid SSL options: {valid}") from None


class NawsvSSLFrontend(nn.Module):
    """WeSpeaker front-end ``nawsv_ssl``: waveforms [B, W] -> all hidden states [B, L+1, T', H] of the student.

    ``output_size()`` is H (WeSpeaker's ``model_args.feat_dim``); the layer weighting lives in the speaker model,
    as in nawsv. Frozen, the student stays in eval mode and runs under no_grad (nawsv's first phase-2 epochs);
    trainable, it is in train mode and masks time spans drawn from its own generator (seed + RANK).
    """

    def __init__(self, init: str, frozen: bool = True, seed: int = 0, frame_shift: int = FRAME_MS,
                 frame_length: int = FRAME_MS, sample_rate: int = SAMPLE_RATE, **ssl_options: Any) -> None:
        super().__init__()
        if sample_rate != SAMPLE_RATE:
            raise ConfigError(f"dataset_args.resample_rate must be {SAMPLE_RATE} for the nawsv_ssl front-end, "
                              f"got {sample_rate}")
        if frame_shift != FRAME_MS or frame_length != FRAME_MS:
            raise ConfigError(f"nawsv_ssl_args.frame_shift / frame_length must be {FRAME_MS} (one WavLM frame is "
                              f"{FRAME_STRIDE} samples), got {frame_shift} / {frame_length}")
        self.ssl = build_ssl(init, ssl_options)
        self.frozen = bool(frozen)
        self.ssl.requires_grad_(not self.frozen)
        self.ssl.train(not self.frozen)
        self.generator = torch.Generator()       # on the CPU whatever the device: masks as nawsv draws them
        self.reseed(int(seed) + int(os.environ.get("RANK", 0)))

    @property
    def num_hidden_states(self) -> int:
        return self.ssl.num_hidden_states

    def output_size(self) -> int:
        return self.ssl.hidden_size

    def reseed(self, seed: int) -> None:
        """Restart the time-mask draws (the executor has no per-step generator; nawsv's trainer does)."""
        self.generator.manual_seed(seed)

    def train(self, mode: bool = True) -> "NawsvSSLFrontend":
        """The executor calls ``model.train()`` every epoch; a frozen student stays in eval mode regardless."""
        super().train(mode)
        self.ssl.train(mode and not self.frozen)
        return self

    def forward(self, wavs: torch.Tensor, wavs_len: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frozen:
            with torch.no_grad():
                hidden = self.ssl(wavs)
        else:
            hidden = self.ssl(wavs, mask=self.training, generator=self.generator if self.training else None)
        sizes = [wavs.shape[1]] * wavs.shape[0] if wavs_len is None else [int(n) for n in wavs_len]
        return hidden, torch.tensor([num_frames(n) for n in sizes], dtype=torch.long, device=wavs.device)


class NawsvEcapaTdnn(EcapaTdnn):
    """WeSpeaker model ``NAWSV_ECAPA_TDNN``: nawsv's ECAPA-TDNN (weighted hidden-state sum first) on the front-end.

    Keyword names follow WeSpeaker's ``model_args``: ``feat_dim`` (filled by the trainer from ``output_size()``),
    ``embed_dim``; ``num_hidden_states`` is filled by :func:`nawsv.integrations.wespeaker.registry.prepare_config`.
    """

    def __init__(self, feat_dim: int, embed_dim: int = 192, channels: int = 512,
                 num_hidden_states: int | None = None) -> None:
        if num_hidden_states is None:
            raise ConfigError("model_args.num_hidden_states is missing: launch with python -m "
                              "nawsv.integrations.wespeaker.train (it sets it from the front-end) or give it")
        super().__init__(num_hidden_states=int(num_hidden_states), input_dim=int(feat_dim), channels=int(channels),
                         embed_dim=int(embed_dim))
        self.backend_kwargs = {"num_hidden_states": int(num_hidden_states), "input_dim": int(feat_dim),
                               "channels": int(channels), "embed_dim": int(embed_dim)}


class NawsvAAMProjection(AAMSoftmax):
    """WeSpeaker projection ``nawsv_aam_intertopk``: returns ``(logits, loss)``, so the executor uses nawsv's loss.

    The "logits" handed back are the plain cosines (the executor only takes their arg-max for its accuracy, which
    is then nawsv's accuracy); ``update(margin=...)`` is what WeSpeaker's MarginScheduler calls. The margin is not
    kept as extra state: WeSpeaker's scheduler sets it in every run, and its ``average_model.py`` sums every entry
    of a state dict, which a non-tensor entry would break.
    """

    get_extra_state = nn.Module.get_extra_state
    set_extra_state = nn.Module.set_extra_state

    def update(self, margin: float) -> None:
        self.set_margin(margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = super().forward(embeddings, labels)[0]
        return self.cosines(embeddings).detach(), loss


def read_utt2spk(path: str | Path) -> list[tuple[str, str]]:
    """``utt spk`` lines (WeSpeaker's ``train_label``); a malformed line is an error naming it."""
    pairs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ConfigError(f"{path}:{number}: expected 'utt spk', got {line!r}")
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise ConfigError(f"{path} lists no utterances; train_label must be the training set's utt2spk")
    return pairs


def class_weights_in_label_order(pairs: Iterable[tuple[str, str]], num_class: int) -> torch.Tensor:
    """nawsv's inverse-frequency weights, indexed like WeSpeaker's ``spk2id`` (speakers sorted by name).

    With speed perturbation WeSpeaker has 3x the classes (label + k * num_spk): each copy keeps its speaker's weight.
    """
    speakers = [spk for _, spk in pairs]
    order = sorted(set(speakers))
    index = {spk: i for i, spk in enumerate(order)}
    counts = [0] * len(order)
    for spk in speakers:
        counts[index[spk]] += 1
    weights = inverse_frequency_weights(counts)
    if num_class == len(order):
        return weights
    if num_class == 3 * len(order):
        return weights.repeat(3)
    raise ConfigError(f"projection_args.num_class={num_class} fits neither the {len(order)} speakers of train_label "
                      f"nor 3x that (speed perturbation)")


def build_projection(conf: dict[str, Any]) -> NawsvAAMProjection:
    """``get_projection`` for ``project_type: nawsv_aam_intertopk`` (keys WeSpeaker adds are accepted)."""
    known = {"project_type", "embed_dim", "num_class", "do_lm", "scale", "margin", "topk", "topk_margin",
             "class_weights", "train_label", "fix_large_angle"}
    unknown = sorted(set(conf) - known)
    if unknown:
        raise ConfigError(f"projection_args: unknown keys {unknown} for nawsv_aam_intertopk; valid: {sorted(known)}")
    weights = None
    if conf.get("class_weights", True):
        if not conf.get("train_label"):
            raise ConfigError("projection_args.train_label is needed for the class weights (the launcher copies "
                              "train_label there); or set projection_args.class_weights: false")
        weights = class_weights_in_label_order(read_utt2spk(conf["train_label"]), int(conf["num_class"]))
    return NawsvAAMProjection(int(conf["embed_dim"]), int(conf["num_class"]), margin=float(conf.get("margin", 0.2)),
                              scale=float(conf.get("scale", 30.0)), topk=int(conf.get("topk", 5)),
                              topk_margin=float(conf.get("topk_margin", 0.1)), class_weights=weights,
                              fix_large_angle=bool(conf.get("fix_large_angle", True)))


class NawsvHalfCosineLR:
    """WeSpeaker scheduler ``NawsvHalfCosineLR``: nawsv's per-epoch half cosine, over a span of several runs.

    WeSpeaker splits phase 2 into runs (frozen, joint, large margin); ``epoch_offset`` and ``total_epochs`` place
    this run on the one 27-epoch cosine of the paper. ``initial_lr``/``final_lr`` are the LRs at a global batch of
    ``base_batch_size``; WeSpeaker's ``scale_ratio`` (global batch / 64) scales them linearly from there, as its
    own schedulers do, so the paper's 5e-5 at its batch 24 is written as is with ``base_batch_size: 24``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, num_epochs: int, epoch_iter: int, initial_lr: float,
                 final_lr: float, total_epochs: int | None = None, epoch_offset: int = 0,
                 scale_ratio: float = 1.0, base_batch_size: int = 64) -> None:
        if epoch_iter < 1:
            raise ConfigError(f"epoch_iter is {epoch_iter}: the training list is smaller than one batch")
        self.optimizer = optimizer
        self.epoch_iter = int(epoch_iter)
        self.total_epochs = int(total_epochs or num_epochs)
        self.epoch_offset = int(epoch_offset)
        if self.epoch_offset < 0 or self.epoch_offset + num_epochs > self.total_epochs:
            raise ConfigError(f"scheduler_args: epoch_offset {epoch_offset} + num_epochs {num_epochs} exceeds "
                              f"total_epochs {self.total_epochs}")
        self.lr_scale = float(scale_ratio) * 64 / int(base_batch_size)      # = global batch / base_batch_size
        self.initial_lr = float(initial_lr) * self.lr_scale
        self.final_lr = float(final_lr) * self.lr_scale
        self.current_lr = self.initial_lr
        self.step(0)

    def lr_at(self, current_iter: int) -> float:
        epoch = self.epoch_offset + current_iter // self.epoch_iter
        return learning_rate(epoch, self.total_epochs, self.initial_lr, self.final_lr, "half_cosine")

    def step(self, current_iter: int | None = None) -> None:
        self.current_lr = self.lr_at(0 if current_iter is None else int(current_iter))
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr

    def get_lr(self) -> float:
        return self.current_lr


def backend_state(model_state: dict[str, torch.Tensor], prefixes: Sequence[str] = ("frontend.", "projection.")
                  ) -> dict[str, torch.Tensor]:
    """The speaker-model tensors of a WeSpeaker state dict (everything but the front-end and projection)."""
    return {k: v for k, v in model_state.items() if not k.startswith(tuple(prefixes))}
