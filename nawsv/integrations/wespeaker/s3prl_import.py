"""Import a model of WeSpeaker's own SSL recipe (s3prl WavLM + layer weights, cmvn, ECAPA-TDNN) into nawsv.

WeSpeaker's ``examples/voxceleb/v2`` WavLM configs train ``frontend: s3prl`` (s3prl's WavLM, its ``Featurizer``
softmax layer weights) -> ``cmvn`` -> ``ECAPA_TDNN_GLOB_c512``. The import writes nawsv's speaker model: the
WavLM weights renamed to Hugging Face's ``WavLMModel`` (with s3prl's input conventions, ``SSLConfig.waveform_norm``
and ``frame_convention: s3prl``, and zero adapters) and :class:`~nawsv.models.ecapa_wespeaker.WeSpeakerEcapaTdnn`
as back-end, so stages 5-7 and ``Verifier`` evaluate a WeSpeaker-trained model. Torch, transformers and nawsv
only: neither WeSpeaker nor s3prl is imported.

The WeSpeaker checkpoint holds every tensor but not WavLM's architecture; that comes from the s3prl checkpoint the
front-end was built from (its ``cfg``), found as s3prl finds it, or from the released geometry of the names
``wavlm_base``, ``wavlm_base_plus`` and ``wavlm_large``.
"""
from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nawsv.models import backbones
from nawsv.models.adapter import attach_adapters
from nawsv.models.config import SSLConfig
from nawsv.models.ssl import SSLEncoder
from nawsv.utils.errors import ConfigError, ExperimentError

log = logging.getLogger(__name__)

UPSTREAM_PREFIX = "frontend.upstream.upstream.model."      # S3prlFrontend.upstream (S3PRLUpstream).upstream.model
FEATURIZER_WEIGHTS = "frontend.featurizer.weights"
BACKEND_NAME = "ecapa_tdnn_wespeaker"
ADAPTER_DIM = 1               # nawsv's student always has adapters; imported ones are zero (they add exactly 0)

# s3prl's WavLMConfig defaults for the fields that shape the model (a checkpoint's cfg may leave them out).
S3PRL_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_norm_first": False,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2", "conv_bias": False,
    "normalize": False, "conv_pos": 128, "conv_pos_groups": 16, "relative_position_embedding": False,
    "num_buckets": 320, "max_distance": 1280, "gru_rel_pos": False,
}
_BASE_PLUS = {"relative_position_embedding": True, "gru_rel_pos": True, "max_distance": 800}
# The released checkpoints behind s3prl's registered names (WeSpeaker's recipe uses wavlm_large).
RELEASED_GEOMETRY: dict[str, dict[str, Any]] = {
    "wavlm_base": dict(_BASE_PLUS),
    "wavlm_base_plus": dict(_BASE_PLUS),
    "wavlm_large": dict(_BASE_PLUS, extractor_mode="layer_norm", encoder_layers=24, encoder_embed_dim=1024,
                        encoder_ffn_embed_dim=4096, encoder_attention_heads=16, layer_norm_first=True,
                        normalize=True),
}

# s3prl WavLM tensor names -> Hugging Face WavLMModel names (first matching rule wins).
_UPSTREAM_RULES = [
    (r"^mask_emb$", "masked_spec_embed"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.", r"feature_extractor.conv_layers.\1.layer_norm."),  # LayerNorm
    (r"^feature_extractor\.conv_layers\.0\.2\.", "feature_extractor.conv_layers.0.layer_norm."),  # GroupNorm
    (r"^layer_norm\.", "feature_projection.layer_norm."),
    (r"^post_extract_proj\.", "feature_projection.projection."),
    (r"^encoder\.pos_conv\.0\.bias$", "encoder.pos_conv_embed.conv.bias"),
    (r"^encoder\.pos_conv\.0\.weight_g$", "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"^encoder\.pos_conv\.0\.weight_v$", "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"^encoder\.layer_norm\.", "encoder.layer_norm."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.grep_a$", r"encoder.layers.\1.attention.gru_rel_pos_const"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.grep_linear\.", r"encoder.layers.\1.attention.gru_rel_pos_linear."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.", r"encoder.layers.\1.attention.rel_attn_embed."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.", r"encoder.layers.\1.attention."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"encoder.layers.\1.layer_norm."),
    (r"^encoder\.layers\.(\d+)\.fc1\.", r"encoder.layers.\1.feed_forward.intermediate_dense."),
    (r"^encoder\.layers\.(\d+)\.fc2\.", r"encoder.layers.\1.feed_forward.output_dense."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
]

# WeSpeaker ECAPA_TDNN names -> WeSpeakerEcapaTdnn names (its layer2..4 are blocks 0..2); see ecapa_state.
_BLOCK_RULES = [(r"0\.conv\.", "expand.0."), (r"0\.bn\.", "expand.2."), (r"1\.convs\.(\d+)\.", r"group_convs.\1.0."),
                (r"1\.bns\.(\d+)\.", r"group_convs.\1.2."), (r"2\.conv\.", "project.0."), (r"2\.bn\.", "project.2."),
                (r"3\.linear1\.", "se.gate.1."), (r"3\.linear2\.", "se.gate.3.")]
_ECAPA_RULES = [(r"^layer1\.conv\.", "stem.0."), (r"^layer1\.bn\.", "stem.2.")] + [
    (rf"^layer{block + 2}\.se_res2block\.{wespeaker}", f"blocks.{block}.{nawsv}")
    for block in range(3) for wespeaker, nawsv in _BLOCK_RULES] + [
    (r"^conv\.", "aggregate."), (r"^pool\.linear1\.", "pooling.attention.0."),
    (r"^pool\.linear2\.", "pooling.attention.2."), (r"^bn\.", "pool_norm."), (r"^linear\.", "embedding."),
    (r"^bn2\.", "embedding_norm.")]
ECAPA_MODELS = {"ECAPA_TDNN_c512": (512, False), "ECAPA_TDNN_GLOB_c512": (512, True),
                "ECAPA_TDNN_c1024": (1024, False), "ECAPA_TDNN_GLOB_c1024": (1024, True)}


def conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """s3prl's ``conv_feature_layers`` string (``"[(512,10,5)] + [(512,3,2)] * 4"``) without ``eval``."""
    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(item) for item in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ConfigError(f"conv_feature_layers {spec!r}: only lists of (dim, kernel, stride) joined by + and * "
                          f"are understood")

    layers = value(ast.parse(spec, mode="eval").body)
    if not isinstance(layers, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
        raise ConfigError(f"conv_feature_layers {spec!r} is not a list of (dim, kernel, stride)")
    return layers


def hf_wavlm_config(cfg: dict[str, Any]) -> Any:
    """The Hugging Face ``WavLMConfig`` of an s3prl WavLM ``cfg`` (eval-only: dropouts and LayerDrop off)."""
    from transformers import WavLMConfig

    cfg = {**S3PRL_DEFAULTS, **cfg}
    if not (cfg["relative_position_embedding"] and cfg["gru_rel_pos"]):
        raise ConfigError("the s3prl WavLM has no gated relative position bias (relative_position_embedding / "
                          "gru_rel_pos false): only released WavLM geometries map onto Hugging Face's WavLMModel")
    if cfg["activation_fn"] != "gelu" or cfg["extractor_mode"] not in ("default", "layer_norm"):
        raise ConfigError(f"s3prl WavLM activation_fn {cfg['activation_fn']!r} / extractor_mode "
                          f"{cfg['extractor_mode']!r}: only gelu and default / layer_norm map onto WavLMModel")
    layers = conv_layers(cfg["conv_feature_layers"])
    return WavLMConfig(
        hidden_size=cfg["encoder_embed_dim"], num_hidden_layers=cfg["encoder_layers"],
        num_attention_heads=cfg["encoder_attention_heads"], intermediate_size=cfg["encoder_ffn_embed_dim"],
        hidden_act="gelu", feat_extract_activation="gelu", layer_norm_eps=1e-5,
        conv_dim=[d for d, _, _ in layers], conv_kernel=[k for _, k, _ in layers],
        conv_stride=[s for _, _, s in layers], conv_bias=bool(cfg["conv_bias"]),
        feat_extract_norm="group" if cfg["extractor_mode"] == "default" else "layer",
        do_stable_layer_norm=bool(cfg["layer_norm_first"]), num_conv_pos_embeddings=cfg["conv_pos"],
        num_conv_pos_embedding_groups=cfg["conv_pos_groups"], num_buckets=cfg["num_buckets"],
        max_bucket_distance=cfg["max_distance"], hidden_dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05)


def rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]], what: str) -> dict[str, torch.Tensor]:
    """``state`` with every name rewritten by the first matching rule; a name no rule matches is an error."""
    renamed = {}
    for name, tensor in state.items():
        for pattern, replacement in rules:
            if re.match(pattern, name):
                renamed[re.sub(pattern, replacement, name, count=1)] = tensor
                break
        else:
            raise ExperimentError(f"the checkpoint's {what} tensor {name!r} has no counterpart in nawsv's model; "
                                  f"it is not a model of WeSpeaker's s3prl WavLM + ECAPA-TDNN recipe")
    return renamed


def ecapa_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """WeSpeaker ECAPA tensors renamed for WeSpeakerEcapaTdnn (SE Linear [out, in] -> Conv1d [out, in, 1])."""
    renamed = rename(state, _ECAPA_RULES, "speaker-model")
    return {k: v.unsqueeze(-1) if ".se.gate." in k and k.endswith("weight") else v for k, v in renamed.items()}


def layer_weights(s3prl_args: dict[str, Any], featurizer: torch.Tensor | None, num_states: int) -> torch.Tensor:
    """What S3prlFrontend does with the hidden states, as fixed weights of a sum over them.

    ``multilayer_feature`` with ``layer: -1`` is s3prl's softmax-weighted sum; ``layer: k`` takes state k and
    ``multilayer_feature: false`` the last one (one-hot weights: the sum is then that state exactly).
    """
    layer = int(s3prl_args.get("layer", -1))
    if layer == -1 and s3prl_args.get("multilayer_feature", True):
        if featurizer is None or featurizer.numel() != num_states:
            raise ExperimentError(f"{FEATURIZER_WEIGHTS}: expected {num_states} layer weights, found "
                                  f"{None if featurizer is None else featurizer.numel()}")
        return torch.softmax(featurizer.float(), dim=-1)
    chosen = num_states - 1 if layer == -1 else layer % num_states
    return nn.functional.one_hot(torch.tensor(chosen), num_states).float()


def upstream_cfg(s3prl_args: dict[str, Any], upstream_ckpt: str | Path | None) -> dict[str, Any]:
    """The s3prl WavLM ``cfg``: from ``upstream_ckpt``, the config's local ``path_or_url``, s3prl's download dir,
    or the released geometry of the registered name -- in that order."""
    upstream_args = s3prl_args.get("upstream_args") or {}
    name = str(upstream_args.get("name", ""))
    if not name.startswith("wavlm"):
        raise ConfigError(f"s3prl_args.upstream_args.name {name!r}: only WavLM upstreams (wavlm_*) are imported")
    if upstream_ckpt:
        if not Path(upstream_ckpt).is_file():
            raise ExperimentError(f"--upstream_ckpt {upstream_ckpt} does not exist")
        return read_upstream_cfg(Path(upstream_ckpt))
    candidates = []
    if upstream_args.get("path_or_url") and "://" not in str(upstream_args["path_or_url"]):
        candidates.append(Path(upstream_args["path_or_url"]))
    download_dir = Path(s3prl_args.get("download_dir") or "./s3prl_hub")
    candidates += sorted(download_dir.glob(f"*.{name}.pt")) if name in RELEASED_GEOMETRY else []
    for path in candidates:
        if path.is_file():
            return read_upstream_cfg(path)
    if name in RELEASED_GEOMETRY:
        log.info("s3prl upstream %s: no checkpoint found (looked in %s); using the released geometry", name,
                 download_dir)
        return dict(RELEASED_GEOMETRY[name])
    raise ConfigError(f"s3prl upstream {name!r} ({upstream_args.get('path_or_url')}): its checkpoint is not here; "
                      f"pass --upstream_ckpt with the s3prl WavLM checkpoint the model was built from")


def read_upstream_cfg(path: Path) -> dict[str, Any]:
    """The ``cfg`` dict of an s3prl WavLM checkpoint (``{"cfg": ..., "model": ...}``)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a foreign or corrupt file
        raise ExperimentError(f"{path} cannot be read as an s3prl WavLM checkpoint ({exc})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("cfg"), dict):
        raise ExperimentError(f"{path} is not an s3prl WavLM checkpoint: it has no 'cfg' dict")
    return dict(checkpoint["cfg"])


def load_exactly(module: nn.Module, weights: dict[str, torch.Tensor], problem: str, fix: str) -> None:
    """Every tensor of ``module`` from ``weights`` and nothing else, or an error naming the first offenders."""
    try:
        result = module.load_state_dict(weights, strict=False)
    except RuntimeError as exc:                   # shapes: torch lists every mismatch, keep the first
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise ExperimentError(f"{problem} ({detail}); {fix}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ExperimentError(f"{problem} (missing {result.missing_keys[:5]}, unexpected "
                              f"{result.unexpected_keys[:5]}); {fix}")


def student_from_s3prl(cfg: dict[str, Any], state: dict[str, torch.Tensor], source: Path) -> SSLEncoder:
    """nawsv's SSL encoder holding the s3prl WavLM of ``state`` (its ``frontend.upstream...`` tensors)."""
    config = backbones.prepare_config(hf_wavlm_config(cfg), 0.0, f"s3prl WavLM of {source}")
    backbone = backbones.new_model(config)
    weights = rename({k[len(UPSTREAM_PREFIX):]: v for k, v in state.items() if k.startswith(UPSTREAM_PREFIX)},
                     _UPSTREAM_RULES, "front-end")
    load_exactly(backbone, weights, f"{source}: the s3prl WavLM tensors do not fit its geometry",
                 "pass the --upstream_ckpt the model was built from")
    ssl_cfg = SSLConfig(adapter_dim=ADAPTER_DIM, zero_init_adapters=True, layerdrop=0.0,
                        waveform_norm=bool({**S3PRL_DEFAULTS, **cfg}["normalize"]), frame_convention="s3prl")
    adapters = attach_adapters(backbone.encoder.layers, config.hidden_size, ADAPTER_DIM, zero_init_up=True)
    return SSLEncoder(backbone.float(), ssl_cfg, adapters, frozen=False, random_init=False)


def import_wespeaker_s3prl(configs: dict[str, Any], state: dict[str, torch.Tensor], source: Path,
                           upstream_ckpt: str | Path | None = None) -> tuple[SSLEncoder, nn.Module, dict[str, Any]]:
    """(student, back-end, back-end kwargs) of a WeSpeaker s3prl + ECAPA model; the caller saves them."""
    from nawsv.models.registry import build_backend

    dataset_args = configs.get("dataset_args", {})
    s3prl_args = dataset_args.get("s3prl_args") or {}
    model_args = configs.get("model_args") or {}
    if configs.get("model") not in ECAPA_MODELS:
        raise ConfigError(f"model {configs.get('model')!r}: the import covers {sorted(ECAPA_MODELS)}")
    if model_args.get("pooling_func", "ASTP") != "ASTP":
        raise ConfigError(f"model_args.pooling_func {model_args['pooling_func']!r}: the import covers ASTP")
    ssl = student_from_s3prl(upstream_cfg(s3prl_args, upstream_ckpt), state, source)
    channels, global_context = ECAPA_MODELS[configs["model"]]
    cmvn = bool(dataset_args.get("cmvn", True))
    cmvn_args = dataset_args.get("cmvn_args") or {}
    kwargs = {"num_hidden_states": ssl.num_hidden_states, "input_dim": ssl.hidden_size, "channels": channels,
              "embed_dim": int(model_args.get("embed_dim", 192)), "global_context": global_context,
              "emb_bn": bool(model_args.get("emb_bn", False)),
              "state_norm": bool((s3prl_args.get("upstream_args") or {}).get("normalize", False)),
              "cmvn_mean": cmvn and bool(cmvn_args.get("norm_mean", True)),
              "cmvn_var": cmvn and bool(cmvn_args.get("norm_var", False))}
    backend = build_backend(BACKEND_NAME, **kwargs)
    weights = ecapa_state({k: v for k, v in state.items() if not k.startswith(("frontend.", "projection."))})
    weights["layer_sum.weights"] = layer_weights(s3prl_args, state.get(FEATURIZER_WEIGHTS), ssl.num_hidden_states)
    load_exactly(backend, weights, f"{source}: the speaker-model tensors do not fit {configs['model']}",
                 "check model and model_args in config.yaml")
    return ssl, backend, kwargs


def describe_import(ssl: SSLEncoder) -> str:
    """One log line: geometry and the s3prl conventions the imported student keeps."""
    return (f"{backbones.describe(ssl.backbone.config)}; waveform_norm {ssl.cfg.waveform_norm}, "
            f"frame_convention {ssl.cfg.frame_convention}")
