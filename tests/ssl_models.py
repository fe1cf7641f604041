"""Small random SSL models of every supported family and layer-norm form, saved as "pre-trained" HF dirs."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model, WavLMConfig, WavLMModel

SMALL = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, conv_dim=[32] * 7,
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layerdrop=0.1, mask_time_prob=0.05)
PRE_LN = dict(do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True)     # the "Large" form
MODELS = {"wavlm": (WavLMConfig, WavLMModel), "hubert": (HubertConfig, HubertModel),
          "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model)}
ARCHS = [(family, form) for family in MODELS for form in ("post_ln", "pre_ln")]
ARCH_IDS = [f"{family}-{form}" for family, form in ARCHS]


def save_hf_dir(path: Path, family: str = "wavlm", **overrides) -> Path:
    """``save_pretrained`` of a seeded random model of ``family`` (SMALL sizes, ``overrides`` on top)."""
    torch.manual_seed(123)
    config_class, model_class = MODELS[family]
    model_class(config_class(**{**SMALL, **overrides})).save_pretrained(path)
    return path


def save_arch(path: Path, family: str, form: str, **overrides) -> Path:
    """A model of ``family`` in the post-LN ("Base") or pre-LN ("Large") form."""
    return save_hf_dir(path, family, **(PRE_LN if form == "pre_ln" else {}), **overrides)
