"""WavLM front-ends of NAW-SV: the student (full pre-trained copy + parallel adapters) and the frozen teacher.

Both wrap a Hugging Face ``WavLMModel`` and return all hidden states stacked to [B, L+1, T', H]:
index 0 is the input of encoder layer 1 (after the positional convolution and the encoder LayerNorm, as in HF),
1..L the layer outputs. For pre-LN ("stable layer norm", Large) checkpoints the last state is the encoder output
after its final LayerNorm (transformers 4.x convention; 5.x returns the un-normalised last layer output).

The states are collected by our own hooks on the encoder layers, not by HF's output-capturing machinery (which
changed in transformers 5), and the feature pipeline is driven here so that HF's SpecAugment never fires: the
only masking is :func:`nawsv.models.masking.apply_spec_masks`, applied when ``mask=True`` with the caller's
generator. LayerDrop (``ssl.layerdrop``, by default the checkpoint's value) acts in train mode only, as in the
released code: a dropped layer repeats the previous hidden state, so L+1 states always come back. Its draws use
the global torch RNG, which the trainer seeds per step (exact resumption holds).

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

from nawsv.models.adapter import attach_adapters
from nawsv.models.config import PRESETS, SSLConfig
from nawsv.models.masking import apply_spec_masks
from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import ConfigError, ExperimentError

log = logging.getLogger(__name__)

STATE_FORMAT = "nawsv.ssl_encoder.v1"


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic weight init that leaves the caller's global RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class SSLEncoder(nn.Module):
    """A WavLM that returns all hidden states; trainable student (adapters) or frozen eval-only teacher."""

    def __init__(self, wavlm: nn.Module, cfg: SSLConfig, adapters: nn.ModuleList | None, frozen: bool,
                 random_init: bool) -> None:
        super().__init__()
        self.wavlm = wavlm
        self.adapters = adapters
        self.cfg = cfg
        self.frozen = frozen
        self.random_init = random_init
        self._recorded: dict[int, torch.Tensor] | None = None
        layers = wavlm.encoder.layers
        self._layer_index = {id(layer): index for index, layer in enumerate(layers)}
        layers[0].register_forward_pre_hook(self._record_encoder_input, with_kwargs=True)
        for layer in layers:
            layer.register_forward_hook(self._record_layer_output)
        if frozen:
            self.requires_grad_(False)
            self.train(False)

    @property
    def num_hidden_states(self) -> int:
        return self.wavlm.config.num_hidden_layers + 1

    @property
    def hidden_size(self) -> int:
        return self.wavlm.config.hidden_size

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [] if self.adapters is None else list(self.adapters.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.wavlm.parameters())

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Phase-1 epochs 1-9 / phase-2 epochs 0-19 freeze the WavLM weights (adapters keep their flag)."""
        if self.frozen:
            raise ValueError("the teacher is frozen for good; build a student to train WavLM weights")
        for param in self.wavlm.parameters():
            param.requires_grad_(trainable)
        self.wavlm.feature_extractor._requires_grad = trainable

    def train(self, mode: bool = True) -> "SSLEncoder":
        """A frozen teacher stays in eval mode even when a parent module is put in train mode."""
        return super().train(mode and not self.frozen)

    def forward(self, wav: torch.Tensor, mask: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Waveforms [B, T] (16 kHz) -> hidden states [B, L+1, T', H]; masking only when ``mask`` is True."""
        if wav.dim() != 2:
            raise ValueError(f"expected waveforms of shape [batch, samples], got {tuple(wav.shape)}")
        if mask and self.frozen:
            raise ValueError("the frozen teacher never masks its input; call it with mask=False")
        if mask and generator is None:
            raise ValueError("mask=True needs the trainer's torch.Generator (masks must be reproducible)")
        grad = torch.no_grad() if self.frozen else contextlib.nullcontext()
        with grad:
            return self._hidden_states(wav, mask, generator)

    def cnn_trainable(self) -> bool:
        return any(param.requires_grad for param in self.wavlm.feature_extractor.parameters())

    def _hidden_states(self, wav: torch.Tensor, mask: bool, generator: torch.Generator | None) -> torch.Tensor:
        with contextlib.nullcontext() if self.cnn_trainable() else torch.no_grad():
            features = self.wavlm.feature_extractor(wav).transpose(1, 2)
        hidden, _ = self.wavlm.feature_projection(features)
        if mask:
            hidden = apply_spec_masks(hidden, self.wavlm.masked_spec_embed, self.cfg, generator)
        self._recorded = {}
        try:
            output = self.wavlm.encoder(hidden)
            recorded = self._recorded
        finally:
            self._recorded = None
        if 0 not in recorded:
            raise RuntimeError("the encoder input was not recorded: the WavLM encoder layout is not the expected one")
        states = [recorded[0]]
        for index in range(1, self.num_hidden_states):
            states.append(recorded.get(index, states[-1]))       # a dropped layer repeats the previous state
        states[-1] = output[0] if isinstance(output, tuple) else output.last_hidden_state
        return torch.stack(states, dim=1)

    def _record_encoder_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._recorded is not None and not self._recorded:
            self._recorded[0] = args[0] if args else kwargs["hidden_states"]

    def _record_layer_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._recorded is not None:
            self._recorded[self._layer_index[id(module)] + 1] = output[0] if isinstance(output, tuple) else output


def _prepare_config(config: Any, layerdrop: float | None) -> Any:
    """Set LayerDrop from ``ssl.layerdrop`` (None keeps the checkpoint's) and switch off HF's own SpecAugment."""
    if getattr(config, "add_adapter", False):
        raise ConfigError("the WavLM config has add_adapter=true (HF's seq2seq conv adapter); nawsv needs a plain "
                          "WavLMModel checkpoint such as microsoft/wavlm-base-plus")
    if layerdrop is not None:
        config.layerdrop = float(layerdrop)
    config.apply_spec_augment = False
    return config


def _ensure_mask_embedding(wavlm: nn.Module) -> bool:
    """Give the model a learned mask embedding when its config had no masking; True when one was created."""
    if getattr(wavlm, "masked_spec_embed", None) is not None:
        return False
    wavlm.masked_spec_embed = nn.Parameter(torch.empty(wavlm.config.hidden_size).uniform_())
    return True


def _load_pretrained(directory: str, layerdrop: float | None) -> nn.Module:
    """WavLMModel.from_pretrained with every checkpoint key accounted for (spec 7.2 bug 2)."""
    from transformers import WavLMConfig, WavLMModel

    path = Path(directory)
    if not (path / "config.json").is_file():
        raise ConfigError(f"ssl.pretrained: {path} is not a Hugging Face model directory (no config.json); "
                          f"download e.g. microsoft/wavlm-base-plus into a local folder and point to it, or set "
                          f"ssl.pretrained to null for a random-init model")
    try:
        config = _prepare_config(WavLMConfig.from_pretrained(path, local_files_only=True), layerdrop)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"ssl.pretrained: {path}/config.json is not a usable WavLM config: {exc}") from None
    try:
        wavlm, info = WavLMModel.from_pretrained(path, config=config, local_files_only=True,
                                                 output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        # Some transformers 4.x releases crash (instead of reporting) on a missing weight-normed tensor.
        diagnosis = _key_problems(set(WavLMModel(config).state_dict()), _checkpoint_keys(path))
        raise ConfigError(_mismatch_message(path, diagnosis) if diagnosis else
                          f"ssl.pretrained: cannot load a WavLM model from {path}: {exc}") from None
    problems = [f"{kind}: {', '.join(sorted(keys))}" for kind, keys in
                (("missing from the checkpoint", set(info.get("missing_keys", ()))),
                 ("unexpected in the checkpoint", set(info.get("unexpected_keys", ()))),
                 ("shape mismatch", {str(k) for k in info.get("mismatched_keys", ())}))
                if keys]
    problems += [str(msg) for msg in info.get("error_msgs", ())]
    if problems:
        raise ConfigError(_mismatch_message(path, problems))
    return wavlm.float()


def _mismatch_message(path: Path, problems: list[str]) -> str:
    return (f"ssl.pretrained: {path} does not match the WavLM architecture of its config.json "
            f"({'; '.join(problems)}); every pre-trained tensor must load. Use an unmodified "
            f"WavLMModel checkpoint (e.g. microsoft/wavlm-base-plus)")


_LEGACY_SUFFIXES = {".weight_g": ".parametrizations.weight.original0",
                    ".weight_v": ".parametrizations.weight.original1"}


def _checkpoint_keys(path: Path) -> set[str]:
    """Tensor names stored in a HF model dir, in the current naming (no ``wavlm.`` prefix, new weight norm)."""
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
        name = name.removeprefix("wavlm.")
        for old, new in _LEGACY_SUFFIXES.items():
            if name.endswith(old):
                name = name[: -len(old)] + new
        normalised.add(name)
    return normalised


def _key_problems(expected: set[str], stored: set[str]) -> list[str]:
    return [f"{kind}: {', '.join(sorted(keys))}" for kind, keys in
            (("missing from the checkpoint", expected - stored), ("unexpected in the checkpoint", stored - expected))
            if keys]


def _build_wavlm(cfg: SSLConfig) -> nn.Module:
    from transformers import WavLMConfig, WavLMModel

    with _seeded(cfg.init_seed):
        if cfg.pretrained is None:
            log.warning("SSL encoder is RANDOM-INIT (preset %r, init_seed %d), not pre-trained WavLM weights: "
                        "results are only a pipeline check", cfg.preset, cfg.init_seed)
            wavlm = WavLMModel(_prepare_config(WavLMConfig(**PRESETS[cfg.preset]), cfg.layerdrop))
        else:
            wavlm = _load_pretrained(cfg.pretrained, cfg.layerdrop)
        if _ensure_mask_embedding(wavlm):
            log.warning("%s has no masked_spec_embed (its config disables masking); a new one is initialised",
                        cfg.pretrained or f"preset {cfg.preset}")
    return wavlm


# The tensors the released student constructor never copied from the checkpoint (spec 2.5).
RELEASED_UNCOPIED = ("encoder.pos_conv_embed.", "encoder.layer_norm.", "masked_spec_embed")


def _reinit_released_partial(wavlm: nn.Module, seed: int) -> list[str]:
    """Put the tensors of :data:`RELEASED_UNCOPIED` back to a fresh HF initialisation; returns their names."""
    with _seeded(seed):
        fresh = type(wavlm)(wavlm.config)
        _ensure_mask_embedding(fresh)
    own = wavlm.state_dict()
    names = [name for name in own if name.startswith(RELEASED_UNCOPIED)]
    with torch.no_grad():
        for name, tensor in fresh.state_dict().items():
            if name in names:
                own[name].copy_(tensor)
    return names


def _student_from_wavlm(wavlm: nn.Module, cfg: SSLConfig, random_init: bool) -> SSLEncoder:
    with _seeded(cfg.init_seed + 1):
        adapters = attach_adapters(wavlm.encoder.layers, wavlm.config.hidden_size, cfg.adapter_dim,
                                   cfg.zero_init_adapters)
    return SSLEncoder(wavlm, cfg, adapters, frozen=False, random_init=random_init)


def build_student(cfg: SSLConfig) -> SSLEncoder:
    """Complete copy of the pre-trained WavLM (or seeded random init) plus one adapter per layer.

    ``cfg.init == "released_partial"`` reproduces the released student instead (some tensors left random).
    """
    wavlm = _build_wavlm(cfg)
    log.info("student LayerDrop %.3g in train mode (%s)", wavlm.config.layerdrop,
             "the checkpoint's value" if cfg.layerdrop is None else "ssl.layerdrop")
    if cfg.init == "released_partial":
        names = _reinit_released_partial(wavlm, cfg.init_seed + 2)
        log.warning("ssl.init released_partial: %d tensors (%s) left at random init as in the released code, not "
                    "copied from the checkpoint", len(names), ", ".join(p.rstrip(".") for p in RELEASED_UNCOPIED))
    return _student_from_wavlm(wavlm, cfg, cfg.random_init)


def build_teacher(cfg: SSLConfig) -> SSLEncoder:
    """The same checkpoint without adapters, frozen: no gradients, always eval mode, forward under no_grad."""
    return SSLEncoder(_build_wavlm(cfg), cfg, None, frozen=True, random_init=cfg.random_init)


def encoder_state(model: SSLEncoder) -> dict[str, Any]:
    """Everything needed to rebuild the student without the original pre-trained directory."""
    return {
        "format": STATE_FORMAT,
        "wavlm_config": model.wavlm.config.to_dict(),
        "ssl_config": dataclasses.asdict(model.cfg),
        "random_init": model.random_init,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def build_student_from_state(state: dict[str, Any], cfg: SSLConfig | None = None) -> SSLEncoder:
    """Rebuild a saved student; ``cfg`` (if given) supplies the masking options, e.g. phase 2's.

    The architecture (WavLM config, adapter width) always comes from the state; a ``cfg`` whose
    ``adapter_dim`` differs is an error.
    """
    from transformers import WavLMConfig, WavLMModel

    missing = [k for k in ("format", "wavlm_config", "ssl_config", "state_dict") if k not in state]
    if missing or state.get("format") != STATE_FORMAT:
        raise ExperimentError(f"not a nawsv student state (format {state.get('format')!r}, missing keys "
                              f"{missing}); write it with nawsv.models.ssl.encoder_state / save_encoder")
    saved = SSLConfig(**state["ssl_config"])
    if cfg is not None and cfg.adapter_dim != saved.adapter_dim:
        raise ExperimentError(f"the saved student has adapter_dim {saved.adapter_dim} but the config asks for "
                              f"{cfg.adapter_dim}; set ssl.adapter_dim: {saved.adapter_dim}")
    use = cfg or saved
    with _seeded(use.init_seed):
        wavlm = WavLMModel(_prepare_config(WavLMConfig.from_dict(dict(state["wavlm_config"])), use.layerdrop))
        _ensure_mask_embedding(wavlm)
    model = _student_from_wavlm(wavlm, dataclasses.replace(use, adapter_dim=saved.adapter_dim),
                                bool(state.get("random_init", False)))
    result = model.load_state_dict(state["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ExperimentError(f"saved student does not match its own config: missing {result.missing_keys}, "
                              f"unexpected {result.unexpected_keys}")
    if model.random_init:
        log.warning("loaded student was trained from a RANDOM-INIT WavLM (not pre-trained weights)")
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
