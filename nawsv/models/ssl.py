"""SSL front-ends of NAW-SV: the student (full pre-trained copy + parallel adapters) and the frozen teacher.

Both wrap a Hugging Face ``WavLMModel``, ``HubertModel`` or ``Wav2Vec2Model`` (post-LN Base or pre-LN Large; the
family-specific parts are in :mod:`nawsv.models.backbones`) and return all hidden states stacked to
[B, L+1, T', H]: 13 for Base, 25 for Large. Index 0 is the input of encoder layer 1 (after the positional
convolution, and for post-LN the encoder LayerNorm, as in HF), 1..L the layer outputs. For pre-LN checkpoints the
last state is the encoder output after its final LayerNorm (transformers 4.x convention; 5.x returns the
un-normalised last layer output).

The states are collected by our own hooks (on the encoder's input dropout and on the layers), not by HF's
output-capturing machinery (which changed in transformers 5), and the feature pipeline is driven here so that
HF's SpecAugment never fires: the only masking is :func:`nawsv.models.masking.apply_spec_masks`, applied when
``mask=True`` with the caller's generator. LayerDrop (``ssl.layerdrop``, by default the checkpoint's value) acts
in train mode only, with the model's own rule (WavLM never drops layer 1, HuBERT and wav2vec 2.0 may): a dropped
layer repeats the previous hidden state, so L+1 states always come back. The drop decisions are drawn here, not
by HF, from the caller's ``layerdrop_generator``: the trainer's is seeded per step and shared by all ranks, so every
rank drops the same layers (as the released code, spec §3), a layer dropped on every rank gets no gradient at all,
and N processes train as one. Without one, the global torch RNG draws them.

While the CNN feature encoder is frozen it runs under ``no_grad``: HF marks its input as requiring grad in train
mode, which would otherwise keep the CNN activations and back-propagate through a third of the forward pass.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from nawsv.models import backbones
from nawsv.models.adapter import attach_adapters
from nawsv.models.config import FRAME_STRIDE, S3PRL_MIN_SAMPLES, SSLConfig, resolve_preset
from nawsv.models.masking import apply_spec_masks
from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import ConfigError, ExperimentError

log = logging.getLogger(__name__)

STATE_FORMAT = "nawsv.ssl_encoder.v2"      # v2: "backbone_config" of any family; v1 ("wavlm_config") still reads
_V1_FORMAT = "nawsv.ssl_encoder.v1"


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic weight init that leaves the caller's global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class SSLEncoder(nn.Module):
    """An SSL model that returns all hidden states; trainable student (adapters) or frozen eval-only teacher."""

    def __init__(self, backbone: nn.Module, cfg: SSLConfig, adapters: nn.ModuleList | None, frozen: bool,
                 random_init: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.adapters = adapters
        self.cfg = cfg
        self.frozen = frozen
        self.random_init = random_init
        self._recorded: dict[int, torch.Tensor] | None = None
        layers = backbone.encoder.layers
        self._layer_index = {id(layer): index for index, layer in enumerate(layers)}
        backbone.encoder.dropout.register_forward_hook(self._record_encoder_input)
        for layer in layers:
            layer.register_forward_hook(self._record_layer_output)
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)
        if frozen:
            self.requires_grad_(False)
            self.train(False)

    @property
    def wavlm(self) -> nn.Module:
        """The HF model under its former name (any family), for code written before HuBERT / wav2vec 2.0."""
        return self.backbone

    @property
    def num_hidden_states(self) -> int:
        return self.backbone.config.num_hidden_layers + 1

    @property
    def hidden_size(self) -> int:
        return self.backbone.config.hidden_size

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [] if self.adapters is None else list(self.adapters.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Phase-1 epochs 1-9 / phase-2 epochs 0-19 freeze the SSL weights (adapters keep their flag)."""
        if self.frozen:
            raise ValueError("the teacher is frozen for good; build a student to train SSL weights")
        for param in self.backbone.parameters():
            param.requires_grad_(trainable)
        self.backbone.feature_extractor._requires_grad = trainable

    def train(self, mode: bool = True) -> "SSLEncoder":
        """A frozen teacher stays in eval mode even when a parent module is put in train mode."""
        return super().train(mode and not self.frozen)

    def forward(self, wav: torch.Tensor, mask: bool = False, generator: torch.Generator | None = None,
                layerdrop_generator: torch.Generator | None = None) -> torch.Tensor:
        """Waveforms [B, T] (16 kHz) -> hidden states [B, L+1, T', H]; masking only when ``mask`` is True.

        ``generator`` draws the masks (per rank), ``layerdrop_generator`` the dropped layers (same on all ranks).
        """
        if wav.dim() != 2:
            raise ValueError(f"expected waveforms of shape [batch, samples], got {tuple(wav.shape)}")
        if mask and self.frozen:
            raise ValueError("the frozen teacher never masks its input; call it with mask=False")
        if mask and generator is None:
            raise ValueError("mask=True needs the trainer's torch.Generator (masks must be reproducible)")
        grad = torch.no_grad() if self.frozen else contextlib.nullcontext()
        with grad:
            return self._hidden_states(wav, mask, generator, layerdrop_generator)

    def dropped_layers(self, generator: torch.Generator | None) -> list[int]:
        """Encoder layers (0-based) LayerDrop skips in one forward: none in eval mode, one CPU draw per layer."""
        rate = float(self.backbone.config.layerdrop)
        if not self.training or rate <= 0.0:
            return []
        first = backbones.get_family(self.backbone.config.model_type, "model config").first_droppable_layer
        draws = torch.rand(len(self.backbone.encoder.layers), generator=generator).tolist()
        return [index for index, draw in enumerate(draws) if index >= first and draw < rate]

    def cnn_trainable(self) -> bool:
        return any(param.requires_grad for param in self.backbone.feature_extractor.parameters())

    def _hidden_states(self, wav: torch.Tensor, mask: bool, generator: torch.Generator | None,
                       layerdrop_generator: torch.Generator | None) -> torch.Tensor:
        num_samples = wav.shape[1]
        if self.cfg.frame_convention == "s3prl" and num_samples < S3PRL_MIN_SAMPLES:
            wav = nn.functional.pad(wav, (0, S3PRL_MIN_SAMPLES - num_samples))
        if self.cfg.waveform_norm:
            wav = nn.functional.layer_norm(wav, wav.shape[1:])
        with contextlib.nullcontext() if self.cnn_trainable() else torch.no_grad():
            features = self.backbone.feature_extractor(wav).transpose(1, 2)
        hidden = backbones.project_features(self.backbone, features)
        if mask:
            hidden = apply_spec_masks(hidden, self.backbone.masked_spec_embed, self.cfg, generator)
        dropped = self.dropped_layers(layerdrop_generator)
        self._recorded = {}
        try:
            with _skipping_layers(self.backbone.encoder, dropped):
                output = self.backbone.encoder(hidden)
            recorded = self._recorded
        finally:
            self._recorded = None
        if 0 not in recorded:
            raise RuntimeError("the encoder input was not recorded: the encoder layout is not the expected one")
        states = [recorded[0]]
        for index in range(1, self.num_hidden_states):
            states.append(recorded.get(index, states[-1]))       # a dropped layer repeats the previous state
        states[-1] = output[0] if isinstance(output, tuple) else output.last_hidden_state
        stacked = torch.stack(states, dim=1)
        return _s3prl_frames(stacked, num_samples) if self.cfg.frame_convention == "s3prl" else stacked

    def _record_encoder_input(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self._recorded is not None:
            self._recorded[0] = output

    def _record_layer_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._recorded is not None:
            self._recorded[self._layer_index[id(module)] + 1] = output[0] if isinstance(output, tuple) else output


def _s3prl_frames(states: torch.Tensor, num_samples: int) -> torch.Tensor:
    """[B, L+1, T', H] cut, or padded with copies of the last frame, to ceil(W / 320) frames (S3PRLUpstream)."""
    target = -(-num_samples // FRAME_STRIDE)
    frames = states.shape[2]
    if frames >= target:
        return states[:, :, :target]
    return torch.cat([states, states[:, :, -1:].expand(-1, -1, target - frames, -1)], dim=2)


@contextlib.contextmanager
def _skipping_layers(encoder: nn.Module, dropped: list[int]) -> Iterator[None]:
    """HF's encoder without the ``dropped`` layers and with its own LayerDrop off (nawsv has drawn it already)."""
    layers, rate = encoder.layers, encoder.config.layerdrop
    if dropped:
        encoder.layers = nn.ModuleList(layer for index, layer in enumerate(layers) if index not in dropped)
    encoder.config.layerdrop = 0.0
    try:
        yield
    finally:
        encoder.layers = layers
        encoder.config.layerdrop = rate


def _rename_legacy_keys(state_dict: dict, prefix: str, *args: Any) -> None:
    """Weights saved before the backbone was renamed (``wavlm.*``, nawsv <= v1 states) load as ``backbone.*``."""
    old = prefix + "wavlm."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "backbone." + key[len(old):]] = state_dict.pop(key)


def _ensure_mask_embedding(model: nn.Module) -> bool:
    """Give the model a learned mask embedding when its config had no masking; True when one was created."""
    if getattr(model, "masked_spec_embed", None) is not None:
        return False
    model.masked_spec_embed = nn.Parameter(torch.empty(model.config.hidden_size).uniform_())
    return True


def _load_pretrained(directory: str, layerdrop: float | None) -> nn.Module:
    """from_pretrained of the family named in config.json, with every checkpoint key accounted for (spec 7.2-2)."""
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise ConfigError(f"ssl.pretrained: {path} is not a Hugging Face model directory (no config.json); "
                          f"download e.g. microsoft/wavlm-base-plus into a local folder and point to it, or set "
                          f"ssl.pretrained to null for a random-init model")
    family = backbones.family_of_dir(path)
    config_class, model_class = family.classes()
    try:
        config = backbones.prepare_config(config_class.from_pretrained(path, local_files_only=True), layerdrop,
                                          f"ssl.pretrained: {path}")
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"ssl.pretrained: {path}/config.json is not a usable {family.model_type} config: "
                          f"{exc}") from None
    try:
        model, info = model_class.from_pretrained(path, config=config, local_files_only=True,
                                                  output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        # Some transformers 4.x releases crash (instead of reporting) on a missing weight-normed tensor.
        diagnosis = _key_problems(set(model_class(config).state_dict()), _checkpoint_keys(path, family))
        raise ConfigError(_mismatch_message(path, family, diagnosis) if diagnosis else
                          f"ssl.pretrained: cannot load a {family.model_class} from {path}: {exc}") from None
    unexpected = {str(k).removeprefix(family.prefix) for k in info.get("unexpected_keys", ())}
    heads = {k for k in unexpected if k.startswith(family.pretraining_heads)} if family.pretraining_heads else set()
    problems = [f"{kind}: {', '.join(sorted(keys))}" for kind, keys in
                (("missing from the checkpoint", set(info.get("missing_keys", ()))),
                 ("unexpected in the checkpoint", unexpected - heads),
                 ("shape mismatch", {str(k) for k in info.get("mismatched_keys", ())}))
                if keys]
    problems += [str(msg) for msg in info.get("error_msgs", ())]
    if problems:
        raise ConfigError(_mismatch_message(path, family, problems))
    if heads:
        log.info("%s: %d tensors of the pre-training heads (%s) are not part of the encoder and were not loaded",
                 path, len(heads), ", ".join(p.rstrip(".") for p in family.pretraining_heads))
    log.info("pre-trained %s from %s", backbones.describe(model.config), path)
    return model.float()


def _mismatch_message(path: Path, family: backbones.Family, problems: list[str]) -> str:
    return (f"ssl.pretrained: {path} does not match the {family.model_class} architecture of its config.json "
            f"({'; '.join(problems)}); every pre-trained tensor must load. Use an unmodified {family.model_class} "
            f"checkpoint (e.g. microsoft/wavlm-base-plus, facebook/hubert-base-ls960)")


_LEGACY_SUFFIXES = {".weight_g": ".parametrizations.weight.original0",
                    ".weight_v": ".parametrizations.weight.original1"}


def _checkpoint_keys(path: Path, family: backbones.Family) -> set[str]:
    """Encoder tensor names stored in a HF model dir, in the current naming (no family prefix, new weight norm)."""
    import json

    from safetensors import safe_open

    names: set[str] = set()
    for index in path.glob("*.index.json"):
        names |= set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}))
    if not names and (path / "model.safetensors").is_file():
        with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
            names = set(handle.keys())
    if not names and (path / "pytorch_model.bin").is_file():
        names = set(torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True))
    normalised = set()
    for name in names:
        name = name.removeprefix(family.prefix)
        if family.pretraining_heads and name.startswith(family.pretraining_heads):
            continue
        for old, new in _LEGACY_SUFFIXES.items():
            if name.endswith(old):
                name = name[: -len(old)] + new
        normalised.add(name)
    return normalised


def _key_problems(expected: set[str], stored: set[str]) -> list[str]:
    return [f"{kind}: {', '.join(sorted(keys))}" for kind, keys in
            (("missing from the checkpoint", expected - stored), ("unexpected in the checkpoint", stored - expected))
            if keys]


def _build_backbone(cfg: SSLConfig) -> nn.Module:
    with _seeded(cfg.init_seed):
        if cfg.pretrained is None:
            preset = resolve_preset(cfg.preset)
            config_class, _ = backbones.FAMILIES[preset.family].classes()
            config = backbones.prepare_config(config_class(**preset.kwargs), cfg.layerdrop, f"preset {cfg.preset}")
            log.warning("SSL encoder is RANDOM-INIT (preset %r: %s, init_seed %d), not pre-trained weights: "
                        "results are only a pipeline check", cfg.preset, backbones.describe(config), cfg.init_seed)
            model = backbones.new_model(config)
        else:
            model = _load_pretrained(cfg.pretrained, cfg.layerdrop)
        if _ensure_mask_embedding(model):
            log.warning("%s has no masked_spec_embed (its config disables masking); a new one is initialised",
                        cfg.pretrained or f"preset {cfg.preset}")
    return model


# The tensors the released student constructor never copied from the checkpoint (spec 2.5).
RELEASED_UNCOPIED = ("encoder.pos_conv_embed.", "encoder.layer_norm.", "masked_spec_embed")


def _reinit_released_partial(model: nn.Module, seed: int) -> list[str]:
    """Put the tensors of :data:`RELEASED_UNCOPIED` back to a fresh HF initialisation; returns their names."""
    with _seeded(seed):
        fresh = type(model)(model.config)
        _ensure_mask_embedding(fresh)
    own = model.state_dict()
    names = [name for name in own if name.startswith(RELEASED_UNCOPIED)]
    with torch.no_grad():
        for name, tensor in fresh.state_dict().items():
            if name in names:
                own[name].copy_(tensor)
    return names


def _student_from_backbone(backbone: nn.Module, cfg: SSLConfig, random_init: bool) -> SSLEncoder:
    with _seeded(cfg.init_seed + 1):
        adapters = attach_adapters(backbone.encoder.layers, backbone.config.hidden_size, cfg.adapter_dim,
                                   cfg.zero_init_adapters)
    return SSLEncoder(backbone, cfg, adapters, frozen=False, random_init=random_init)


def build_student(cfg: SSLConfig) -> SSLEncoder:
    """Complete copy of the pre-trained SSL model (or seeded random init) plus one adapter per layer.

    ``cfg.init == "released_partial"`` reproduces the released student instead (some tensors left random).
    """
    backbone = _build_backbone(cfg)
    log.info("student LayerDrop %.3g in train mode (%s)", backbone.config.layerdrop,
             "the checkpoint's value" if cfg.layerdrop is None else "ssl.layerdrop")
    if cfg.init == "released_partial":
        names = _reinit_released_partial(backbone, cfg.init_seed + 2)
        log.warning("ssl.init released_partial: %d tensors (%s) left at random init as in the released code, not "
                    "copied from the checkpoint", len(names), ", ".join(p.rstrip(".") for p in RELEASED_UNCOPIED))
    return _student_from_backbone(backbone, cfg, cfg.random_init)


def build_teacher(cfg: SSLConfig) -> SSLEncoder:
    """The same checkpoint without adapters, frozen: no gradients, always eval mode, forward under no_grad."""
    return SSLEncoder(_build_backbone(cfg), cfg, None, frozen=True, random_init=cfg.random_init)


def encoder_state(model: SSLEncoder) -> dict[str, Any]:
    """Everything needed to rebuild the student without the original pre-trained directory."""
    return {
        "format": STATE_FORMAT,
        "backbone_config": model.backbone.config.to_dict(),
        "ssl_config": dataclasses.asdict(model.cfg),
        "random_init": model.random_init,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def build_student_from_state(state: dict[str, Any], cfg: SSLConfig | None = None) -> SSLEncoder:
    """Rebuild a saved student; ``cfg`` (if given) supplies the masking options, e.g. phase 2's.

    The architecture (SSL model config, adapter width) always comes from the state; a ``cfg`` whose
    ``adapter_dim`` differs is an error.
    """
    config_key = "wavlm_config" if state.get("format") == _V1_FORMAT else "backbone_config"
    missing = [k for k in ("format", config_key, "ssl_config", "state_dict") if k not in state]
    if missing or state.get("format") not in (STATE_FORMAT, _V1_FORMAT):
        raise ExperimentError(f"not a nawsv student state (format {state.get('format')!r}, missing keys "
                              f"{missing}); write it with nawsv.models.ssl.encoder_state / save_encoder")
    config = dict(state[config_key])
    if config_key == "wavlm_config":
        config.setdefault("model_type", "wavlm")       # v1 states hold WavLM only
    saved = SSLConfig(**state["ssl_config"])
    if cfg is not None and cfg.adapter_dim != saved.adapter_dim:
        raise ExperimentError(f"the saved student has adapter_dim {saved.adapter_dim} but the config asks for "
                              f"{cfg.adapter_dim}; set ssl.adapter_dim: {saved.adapter_dim}")
    use = cfg or saved
    where = "saved student config"
    with _seeded(use.init_seed):
        backbone = backbones.new_model(backbones.prepare_config(backbones.config_from_dict(config, where),
                                                                use.layerdrop, where))
        _ensure_mask_embedding(backbone)
    model = _student_from_backbone(backbone, dataclasses.replace(use, adapter_dim=saved.adapter_dim),
                                   bool(state.get("random_init", False)))
    result = model.load_state_dict(state["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ExperimentError(f"saved student does not match its own config: missing {result.missing_keys}, "
                              f"unexpected {result.unexpected_keys}")
    if model.random_init:
        log.warning("loaded student was trained from a RANDOM-INIT SSL model (not pre-trained weights)")
    return model


def save_encoder(model: SSLEncoder, path: str | Path) -> None:
    """Write :func:`encoder_state` atomically (a killed run never leaves a half file)."""
    with atomic_open(path, "wb", encoding=None) as handle:
        torch.save(encoder_state(model), handle)


def load_encoder_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_encoder`, with an error that names it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExperimentError(f"student file {path} does not exist; run the warm-up stage (3) first") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt or foreign file
        raise ExperimentError(f"student file {path} cannot be read ({exc}); rerun the stage that writes it") from None
