"""Typed options of the SSL front-end (student / teacher), shared by the warm-up and fine-tune stages.

Import-light on purpose (no torch / transformers): stage configs embed :class:`SSLConfig` and are validated
before any model is built.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

# The convolutional front end of WavLM, HuBERT and wav2vec 2.0: 7 layers, total stride 320 samples = one frame
# every 20 ms at 16 kHz, receptive field 400 samples. Every preset keeps it (same frame counts for every backbone).
CONV_KERNEL = [10, 3, 3, 3, 3, 2, 2]
CONV_STRIDE = [5, 2, 2, 2, 2, 2, 2]

# Random-initialisation architectures: (family, keyword arguments of the family's HF config class). A pre-trained
# directory (SSLConfig.pretrained) always brings its own config.json instead. Dropout and LayerDrop rates are
# WavLM Base+'s for every preset (they only matter for benchmarks of random-init models).
_DROPOUT: dict[str, Any] = dict(hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.0,
                                feat_proj_dropout=0.1, layerdrop=0.05, mask_time_prob=0.05)
_CNN: dict[str, Any] = dict(conv_kernel=CONV_KERNEL, conv_stride=CONV_STRIDE, conv_dim=[512] * 7)
# post-LN "Base": 12 x 768, GroupNorm in the first conv layer, no conv bias.
_BASE: dict[str, Any] = dict(_DROPOUT, **_CNN, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
                             feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
# pre-LN "Large" ("stable layer norm"): 24 x 1024, LayerNorm after every conv layer, conv bias (not in WavLM).
_LARGE: dict[str, Any] = dict(_BASE, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
                              conv_bias=True)
_WAVLM: dict[str, Any] = dict(num_buckets=320, max_bucket_distance=800)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named architecture: the model family (nawsv.models.backbones.FAMILIES) and its config arguments."""

    family: str
    kwargs: dict[str, Any]
    source: str                  # the published checkpoint with this architecture


PRESETS: dict[str, Preset] = {
    # A very small WavLM for unit tests and the CPU mini recipe (about 0.7 M parameters).
    "tiny": Preset("wavlm", dict(_BASE, **_WAVLM, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                 intermediate_size=256, conv_dim=[64] * 7, num_conv_pos_embeddings=32,
                                 num_conv_pos_embedding_groups=8), "none (random init only)"),
    "wavlm_base": Preset("wavlm", dict(_BASE, **_WAVLM), "microsoft/wavlm-base"),
    "wavlm_base_plus": Preset("wavlm", dict(_BASE, **_WAVLM), "microsoft/wavlm-base-plus"),
    "wavlm_large": Preset("wavlm", dict(_LARGE, **_WAVLM, conv_bias=False), "microsoft/wavlm-large"),
    "hubert_base": Preset("hubert", dict(_BASE), "facebook/hubert-base-ls960"),
    "hubert_large": Preset("hubert", dict(_LARGE), "facebook/hubert-large-ll60k"),
    "wav2vec2_base": Preset("wav2vec2", dict(_BASE), "facebook/wav2vec2-base"),
    "wav2vec2_large": Preset("wav2vec2", dict(_LARGE), "facebook/wav2vec2-large-lv60"),
}
# Former names, still accepted so that existing configs keep resolving to the same architecture.
PRESET_ALIASES = {"base_plus": "wavlm_base_plus"}


def resolve_preset(name: str) -> Preset:
    """The architecture of preset ``name`` (or of its former name)."""
    return PRESETS[PRESET_ALIASES.get(name, name)]

# How the student's backbone is initialised: "full" copies every pre-trained tensor (nawsv); "released_partial"
# leaves the positional convolution, the encoder LayerNorm and the mask embedding at random init, as the authors'
# code did (spec 2.5, 7.2-2). Only for comparing like with like against the released logs; never a default.
INIT_MODES = {"full": "complete copy of the pre-trained model",
              "released_partial": "pos_conv_embed, encoder.layer_norm, masked_spec_embed left random (released code)"}

FRAME_STRIDE = 320            # samples per SSL frame (20 ms at 16 kHz)
RECEPTIVE_FIELD = 400         # samples seen by the first frame

# How W samples become frames. "hf": the CNN's own count (num_frames below), as Hugging Face and nawsv's training.
# "s3prl": what s3prl's S3PRLUpstream (WeSpeaker's s3prl front-end) hands on: inputs shorter than 800 samples are
# zero-padded to 800, and the states are cut or padded by repeating the last frame to ceil(W / 320) frames. Only
# models imported from WeSpeaker use it: their back-end was trained on those frames.
FRAME_CONVENTIONS = {"hf": "the CNN's frames", "s3prl": "ceil(W / 320) frames, last one repeated (S3PRLUpstream)"}
S3PRL_MIN_SAMPLES = 800


def num_frames(num_samples: int) -> int:
    """Frames the SSL CNN produces for ``num_samples`` samples (149 for 3 s, 299 for 6 s)."""
    frames = num_samples
    for kernel, stride in zip(CONV_KERNEL, CONV_STRIDE, strict=True):
        frames = (frames - kernel) // stride + 1
    return max(frames, 0)


@dataclasses.dataclass
class SSLConfig:
    """SSL model source, adapters and SpecAugment-style masking (defaults: the phase-1 masking of the paper)."""

    pretrained: str | None = None             # local HF model dir (WavLM, HuBERT, wav2vec 2.0); None = random init
    preset: str = "tiny"                      # architecture used when pretrained is None (see PRESETS)
    init_seed: int = 0                        # seeds random init (model and adapters), so student == teacher backbone
    adapter_dim: int = 64                     # bottleneck width of the parallel adapters (768 -> 64 -> 768)
    zero_init_adapters: bool = False          # zero the up-projection: student == teacher at step 0 (spec 7.2-6)
    mask_time_prob: float = 0.1               # phase 1: 0.1 / 5; phase 2: 0.05 / 10
    mask_time_length: int = 5
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.05           # phase 1: 0.05 / 10; phase 2: 0 (no channel masking)
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    layerdrop: float | None = None            # None: the checkpoint's (preset's) value, 0.05 for Base+; 0 disables
    init: Literal["full", "released_partial"] = "full"   # released_partial: the released code's student (spec 2.5)
    waveform_norm: bool = False               # LayerNorm over each waveform first (s3prl WavLM Large's "normalize")
    frame_convention: Literal["hf", "s3prl"] = "hf"      # see FRAME_CONVENTIONS; s3prl only for imported models

    def __post_init__(self) -> None:
        if self.pretrained is not None and not self.pretrained.strip():
            raise ValueError("pretrained must be a model directory or null (random init), not an empty string")
        if self.preset not in PRESETS and self.preset not in PRESET_ALIASES:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if self.layerdrop is not None and not 0.0 <= self.layerdrop < 1.0:
            raise ValueError(f"layerdrop must lie in [0, 1) or be null (the checkpoint's value), got {self.layerdrop}")
        if self.init not in INIT_MODES:
            raise ValueError(f"init must be one of {list(INIT_MODES)}, got {self.init!r}")
        if self.frame_convention not in FRAME_CONVENTIONS:
            raise ValueError(f"frame_convention must be one of {list(FRAME_CONVENTIONS)}, "
                             f"got {self.frame_convention!r}")
        if self.adapter_dim < 1:
            raise ValueError(f"adapter_dim must be >= 1, got {self.adapter_dim}")
        for name in ("mask_time_prob", "mask_feature_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        for name in ("mask_time_length", "mask_feature_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("mask_time_min_masks", "mask_feature_min_masks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def random_init(self) -> bool:
        """True when no pre-trained weights are used (results must then be labelled as random-init)."""
        return self.pretrained is None
