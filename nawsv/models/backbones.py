"""The SSL model families nawsv can warm up, and the few places where their Hugging Face classes differ.

WavLM, HuBERT and wav2vec 2.0 share one layout in transformers (``feature_extractor`` -> ``feature_projection``
-> ``encoder`` with ``pos_conv_embed``, ``layer_norm``, ``dropout`` and ``layers[i].feed_forward``, and a
``masked_spec_embed``), in a post-LN ("Base") and a pre-LN ("stable layer norm", "Large") form chosen by
``do_stable_layer_norm``. Everything that depends on the family lives here, so the student, the teacher and
everything downstream stay family-agnostic.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nawsv.models.config import CONV_KERNEL, CONV_STRIDE
from nawsv.utils.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Family:
    """One Hugging Face SSL model class and what its checkpoints may carry besides the encoder."""

    model_type: str                          # config.json "model_type"
    config_class: str                        # transformers class names, imported when a model is built
    model_class: str
    pretraining_heads: tuple[str, ...] = ()  # tensors of the pre-training task (not the encoder), ignored on load
    first_droppable_layer: int = 0           # HF's LayerDrop rule: WavLM never drops layer 1 (its position bias)

    @property
    def prefix(self) -> str:
        """The prefix of encoder tensors in checkpoints of task models (``wav2vec2.`` in Wav2Vec2ForPreTraining)."""
        return self.model_type + "."

    def classes(self) -> tuple[type, type]:
        import transformers

        return getattr(transformers, self.config_class), getattr(transformers, self.model_class)


FAMILIES: dict[str, Family] = {
    "wavlm": Family("wavlm", "WavLMConfig", "WavLMModel", first_droppable_layer=1),
    "hubert": Family("hubert", "HubertConfig", "HubertModel"),
    # facebook/wav2vec2-base and -large-lv60 are Wav2Vec2ForPreTraining checkpoints: quantiser and projections.
    "wav2vec2": Family("wav2vec2", "Wav2Vec2Config", "Wav2Vec2Model", ("quantizer.", "project_q.", "project_hid.")),
}


def get_family(model_type: str, where: str) -> Family:
    """The family of ``model_type``; ``where`` names the config it came from in the error."""
    if model_type not in FAMILIES:
        raise ConfigError(f"{where}: model_type {model_type!r} is not a supported SSL architecture; supported: "
                          f"{', '.join(sorted(FAMILIES))} (WavLM, HuBERT, wav2vec 2.0, Base and Large)")
    return FAMILIES[model_type]


def family_of_dir(path: Path) -> Family:
    """The family named by the ``model_type`` of a Hugging Face model directory's config.json."""
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"ssl.pretrained: cannot read {path / 'config.json'} ({exc}); it must be the config.json "
                          f"that save_pretrained wrote") from None
    return get_family(str(model_type), f"ssl.pretrained: {path / 'config.json'}")


def config_from_dict(values: dict[str, Any], where: str) -> Any:
    """A HF config object from its ``to_dict()`` form (the family comes from its ``model_type``)."""
    config_class, _ = get_family(str(values.get("model_type")), where).classes()
    return config_class.from_dict(dict(values))


def new_model(config: Any) -> nn.Module:
    """A randomly initialised model of the config's family (weights come from the global torch RNG)."""
    _, model_class = get_family(config.model_type, "model config").classes()
    return model_class(config)


def prepare_config(config: Any, layerdrop: float | None, where: str) -> Any:
    """Set LayerDrop (None keeps the config's), switch off HF's SpecAugment; refuse HF adapters, other CNNs."""
    if getattr(config, "add_adapter", False) or getattr(config, "adapter_attn_dim", None) is not None:
        raise ConfigError(f"{where}: the {config.model_type} config has HF adapters (add_adapter / adapter_attn_dim, "
                          f"e.g. an MMS checkpoint); nawsv adds its own and needs a plain pre-trained checkpoint")
    if list(config.conv_kernel) != CONV_KERNEL or list(config.conv_stride) != CONV_STRIDE:
        raise ConfigError(f"{where}: the CNN front end (conv_kernel {list(config.conv_kernel)}, conv_stride "
                          f"{list(config.conv_stride)}) is not the 20-ms one of WavLM / HuBERT / wav2vec 2.0 "
                          f"(kernels {CONV_KERNEL}, strides {CONV_STRIDE}) that cropping and segmenting assume")
    if layerdrop is not None:
        config.layerdrop = float(layerdrop)
    config.apply_spec_augment = False
    return config


def project_features(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """CNN features [B, T', C] -> encoder input [B, T', H] (WavLM and wav2vec 2.0 also return the normed input)."""
    out = model.feature_projection(features)
    return out[0] if isinstance(out, tuple) else out


def layer_norm_form(config: Any) -> str:
    """"pre-LN" for "stable layer norm" (Large) models, else "post-LN"."""
    return "pre-LN" if config.do_stable_layer_norm else "post-LN"


def describe(config: Any) -> str:
    """One line for logs: family, form and size."""
    return (f"{config.model_type} {layer_norm_form(config)}, {config.num_hidden_layers} layers x "
            f"{config.hidden_size} ({config.num_hidden_layers + 1} hidden states)")
