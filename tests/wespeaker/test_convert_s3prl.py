"""Reverse import: a model of WeSpeaker's own WavLM recipe, built by WeSpeaker's and s3prl's code, into nawsv.

The WeSpeaker model is ``S3prlFrontend`` (s3prl's WavLM from a local checkpoint, its ``Featurizer``) ->
``apply_cmvn`` -> ``ECAPA_TDNN_GLOB_c512``, as ``examples/voxceleb/v2/conf/ecapa_tdnn_WavLM_*.yaml`` configure it,
with every tensor (weights, BatchNorm statistics, layer weights) moved off its initial value so that a tensor
mapped to the wrong place cannot go unnoticed. Its embeddings must equal the converted nawsv model's to 1e-5
(float32: the two WavLMs differ only in the order of their sums, about 1e-7 of the embedding's scale).
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch
import yaml

from nawsv.integrations.wespeaker.convert import main as convert_main
from nawsv.integrations.wespeaker.convert import wespeaker_to_nawsv
from nawsv.models.speaker import load_speaker_model
from nawsv.utils.errors import ConfigError, ExperimentError
from tests.conftest import run_module
from tests.wespeaker.weights import perturb

TOLERANCE = 1e-5
# Two tiny WavLMs with the conventions of the released Base+ (post-LN, GroupNorm CNN, raw waveform) and Large
# (pre-LN, LayerNorm CNN, normalised waveform; WeSpeaker's upstream_args.normalize on top).
TINY = dict(encoder_layers=3, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
            conv_feature_layers="[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2", conv_pos=8, conv_pos_groups=4,
            relative_position_embedding=True, num_buckets=320, max_distance=800, gru_rel_pos=True)
CONVENTIONS = {"base_plus": dict(extractor_mode="default", layer_norm_first=False, normalize=False, conv_bias=False),
               "large": dict(extractor_mode="layer_norm", layer_norm_first=True, normalize=True, conv_bias=True)}


def recipe_root() -> Path:
    import wespeaker

    return Path(wespeaker.__file__).resolve().parents[1] / "examples" / "voxceleb" / "v2" / "conf"


def recipe_config(name: str, exp_dir: Path, upstream_args: dict, download_dir: Path) -> dict:
    """WeSpeaker's shipped WavLM config with the upstream pointed at a local checkpoint (hubs are unreachable)."""
    configs = yaml.safe_load((recipe_root() / f"ecapa_tdnn_WavLM_{name}.yaml").read_text())
    configs["exp_dir"] = str(exp_dir)
    configs["dataset_args"]["s3prl_args"]["upstream_args"] = upstream_args
    configs["dataset_args"]["s3prl_args"]["download_dir"] = str(download_dir)
    return configs


def build_wespeaker_model(configs: dict) -> torch.nn.Module:
    """The model as WeSpeaker's train.py / extract.py build it: speaker model + front-end + projection."""
    from wespeaker.frontend import frontend_class_dict
    from wespeaker.models.projections import get_projection
    from wespeaker.models.speaker_model import get_speaker_model

    dataset_args = configs["dataset_args"]
    frontend = frontend_class_dict["s3prl"](**dataset_args["s3prl_args"], sample_rate=dataset_args["resample_rate"])
    configs["model_args"]["feat_dim"] = frontend.output_size()
    model = get_speaker_model(configs["model"])(**configs["model_args"])
    model.add_module("frontend", frontend)
    projection_args = dict(configs["projection_args"], embed_dim=configs["model_args"]["embed_dim"], num_class=5,
                           do_lm=False)
    model.add_module("projection", get_projection(projection_args))
    return model


@pytest.fixture(scope="module", params=sorted(CONVENTIONS))
def wespeaker_exp(request, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A WeSpeaker experiment dir (config.yaml + models/avg_model.pt) of a tiny WavLM recipe model."""
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig
    from wespeaker.utils.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp(f"s3prl_{request.param}")
    cfg = dict(TINY, **CONVENTIONS[request.param])
    upstream = root / "tiny_wavlm.pt"
    torch.manual_seed(1)
    torch.save({"cfg": cfg, "model": WavLM(WavLMConfig(cfg)).state_dict()}, upstream)
    normalize = request.param == "large"
    configs = recipe_config("joint_lmft", root / "exp", {"name": "wavlm_local", "path_or_url": str(upstream),
                                                        "normalize": normalize}, root / "s3prl_hub")
    configs["model_args"]["embed_dim"] = 32
    model = build_wespeaker_model(configs)
    perturb(model, seed=2)
    model.eval()
    (root / "exp" / "models").mkdir(parents=True)
    save_checkpoint(model, str(root / "exp" / "models" / "avg_model.pt"))
    (root / "exp" / "config.yaml").write_text(yaml.safe_dump(configs))
    return {"root": root, "exp": root / "exp", "model": model, "configs": configs, "cfg": cfg, "upstream": upstream}


def wespeaker_embed(model: torch.nn.Module, configs: dict, wav: torch.Tensor) -> torch.Tensor:
    """extract.py's forward: front-end on full-length waveforms, cmvn as configured, the embedding output."""
    from wespeaker.dataset.dataset_utils import apply_cmvn

    with torch.no_grad():
        features, _ = model.frontend(wav, torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long))
        features = apply_cmvn(features, **configs["dataset_args"]["cmvn_args"])
        return model(features)[-1]


@pytest.fixture(scope="module")
def converted(wespeaker_exp: dict) -> Path:
    out = wespeaker_exp["root"] / "nawsv" / "avg_model.pt"
    out.parent.mkdir()
    assert convert_main(["to-nawsv", "--exp_dir", str(wespeaker_exp["exp"]), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("num_samples", [16000, 16100, 16050, 12345, 700])
def test_converted_model_embeds_like_wespeakers_own(wespeaker_exp: dict, converted: Path, num_samples: int) -> None:
    """Whole waveforms of every length class of s3prl's frame padding (W mod 320 = 0, >= 80, < 80; < 800
    samples, zero-padded by S3PRLUpstream): the converted model's embeddings equal WeSpeaker's to 1e-5."""
    wav = torch.randn(2, num_samples, generator=torch.Generator().manual_seed(num_samples))
    expected = wespeaker_embed(wespeaker_exp["model"], wespeaker_exp["configs"], wav)
    model = load_speaker_model(converted)
    with torch.no_grad():
        got = model(wav)
    difference = (got - expected).abs().max().item()
    print(f"{wespeaker_exp['cfg']['extractor_mode']} W={num_samples}: max |diff| {difference:.3g} "
          f"(embedding scale {expected.abs().max().item():.3g})")
    assert got.shape == expected.shape and difference <= TOLERANCE
    assert model.backend.layer_sum.weights.sum().item() == pytest.approx(1.0, abs=1e-6)   # s3prl's softmax


def test_the_import_is_sensitive_to_every_convention(wespeaker_exp: dict, converted: Path) -> None:
    """Dropping s3prl's frame padding, its waveform/state normalisation or WeSpeaker's cmvn breaks the equality:
    the options the import sets are the ones that make it exact (a test that cannot fail proves nothing)."""
    wav = torch.randn(1, 16000, generator=torch.Generator().manual_seed(3))
    expected = wespeaker_embed(wespeaker_exp["model"], wespeaker_exp["configs"], wav)
    changes = {"frame_convention": lambda m: setattr(m.ssl.cfg, "frame_convention", "hf"),
               "cmvn_mean": lambda m: setattr(m.backend, "cmvn_mean", False)}
    if wespeaker_exp["cfg"]["normalize"]:
        changes["waveform_norm"] = lambda m: setattr(m.ssl.cfg, "waveform_norm", False)
        changes["state_norm"] = lambda m: setattr(m.backend, "state_norm", False)
    for name, change in changes.items():
        broken = load_speaker_model(converted)
        change(broken)
        with torch.no_grad():
            assert (broken(wav) - expected).abs().max().item() > 100 * TOLERANCE, name


@pytest.mark.parametrize("wespeaker_exp", ["large"], indirect=True)   # the convention with the most options
def test_wespeaker_extract_and_nawsv_stage5_agree_on_the_imported_model(wespeaker_exp: dict, converted: Path,
                                                                          train_data: dict) -> None:
    """WeSpeaker's own extract.py (through nawsv's tools entry, CPU shim) on the recipe experiment, and nawsv's
    stage 5 on the converted model, over the same utterances: the same keys and vectors to 1e-5."""
    from nawsv.bin.extract import main as extract_main

    exp = wespeaker_exp["exp"]
    ark = exp / "embeddings" / "test" / "xvector.ark"
    proc = run_module("nawsv.integrations.wespeaker.tools", "extract", "--device", "cpu",
                      "--config", str(exp / "config.yaml"), "--model_path", str(exp / "models" / "avg_model.pt"),
                      "--data_type", "raw", "--data_list", str(train_data["test"] / "raw.list"),
                      "--embed_ark", str(ark), "--batch_size", "1", "--num_workers", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = dict(kaldiio.load_scp(str(ark.with_suffix(".scp"))))
    out = wespeaker_exp["root"] / "nawsv" / "embeddings" / "test"
    assert extract_main(["--model", str(converted), "--data_dir", str(train_data["test"]), "--out_dir", str(out),
                         "--device", "cpu", "--override", "segments.enabled=false"]) == 0
    ours = dict(kaldiio.load_scp(str(out / "xvector.scp")))
    assert sorted(theirs) == sorted(ours) == sorted(line.split()[0] for line in
                                                   (train_data["test"] / "utt2spk").read_text().splitlines())
    difference = max(float(np.abs(theirs[k] - ours[k]).max()) for k in ours)
    print(f"extract.py vs stage 5 ({len(ours)} utterances): max |diff| {difference:.3g}")
    assert difference <= TOLERANCE


@pytest.mark.parametrize("wespeaker_exp", ["large"], indirect=True)   # the convention with the most options
def test_released_geometry_is_used_when_no_checkpoint_is_found(wespeaker_exp: dict, tmp_path: Path) -> None:
    """The recipe's registered names (wavlm_large, ...) need no s3prl checkpoint: their released geometry is
    known. A tiny model under such a name does not fit it, and the error says how to fix it: --upstream_ckpt, or
    the checkpoint where s3prl downloads it (``<download_dir>/<sha256 of the URL>.<name>.pt``)."""
    configs = dict(wespeaker_exp["configs"])
    configs["dataset_args"] = copy.deepcopy(configs["dataset_args"])
    configs["dataset_args"]["s3prl_args"]["upstream_args"] = {"name": "wavlm_base_plus"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(configs))
    checkpoint = wespeaker_exp["exp"] / "models" / "avg_model.pt"
    with pytest.raises(ExperimentError, match="do not fit its geometry.*--upstream_ckpt"):
        wespeaker_to_nawsv(tmp_path / "config.yaml", checkpoint, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    out = wespeaker_to_nawsv(tmp_path / "config.yaml", checkpoint, tmp_path / "y.pt",
                             upstream_ckpt=wespeaker_exp["upstream"])
    assert load_speaker_model(out).ssl.num_hidden_states == TINY["encoder_layers"] + 1
    hub = Path(configs["dataset_args"]["s3prl_args"]["download_dir"])     # where s3prl would have downloaded it
    hub.mkdir(exist_ok=True)
    shutil.copy(wespeaker_exp["upstream"], hub / "0123abcd.wavlm_base_plus.pt")
    try:
        out = wespeaker_to_nawsv(tmp_path / "config.yaml", checkpoint, tmp_path / "z.pt")
    finally:
        (hub / "0123abcd.wavlm_base_plus.pt").unlink()
    assert load_speaker_model(out).ssl.num_hidden_states == TINY["encoder_layers"] + 1


@pytest.mark.parametrize("wespeaker_exp", ["large"], indirect=True)   # the convention with the most options
def test_unsupported_models_are_refused_with_the_reason(wespeaker_exp: dict, tmp_path: Path) -> None:
    configs = copy.deepcopy(wespeaker_exp["configs"])
    configs["model"] = "ResNet34"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(configs))
    with pytest.raises(ConfigError, match="ResNet34.*ECAPA_TDNN_GLOB_c512"):
        wespeaker_to_nawsv(tmp_path / "config.yaml", wespeaker_exp["exp"] / "models" / "avg_model.pt",
                           tmp_path / "x.pt")
    configs = copy.deepcopy(wespeaker_exp["configs"])
    configs["dataset_args"]["s3prl_args"]["upstream_args"]["name"] = "hubert_local"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(configs))
    with pytest.raises(ConfigError, match="only WavLM upstreams"):
        wespeaker_to_nawsv(tmp_path / "config.yaml", wespeaker_exp["exp"] / "models" / "avg_model.pt",
                           tmp_path / "x.pt")


@pytest.mark.slow
def test_base_plus_geometry(tmp_path: Path) -> None:
    """The real WavLM Base+ geometry (12 x 768, random weights) under the recipe's name ``wavlm_base_plus``
    and no checkpoint at hand: converted from the WeSpeaker model alone, it embeds like WeSpeaker's."""
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    from nawsv.integrations.wespeaker.s3prl_import import RELEASED_GEOMETRY

    cfg = RELEASED_GEOMETRY["wavlm_base_plus"]
    upstream = tmp_path / "base_plus.pt"
    torch.manual_seed(4)
    torch.save({"cfg": cfg, "model": WavLM(WavLMConfig(cfg)).state_dict()}, upstream)
    configs = recipe_config("frozen", tmp_path / "exp", {"name": "wavlm_local", "path_or_url": str(upstream)},
                            tmp_path / "hub")
    model = build_wespeaker_model(configs)
    upstream.unlink()                                          # only the WeSpeaker checkpoint is left
    perturb(model, seed=5)
    model.eval()
    torch.save(model.state_dict(), tmp_path / "avg_model.pt")
    configs["dataset_args"]["s3prl_args"]["upstream_args"] = {"name": "wavlm_base_plus"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(configs))
    out = wespeaker_to_nawsv(tmp_path / "config.yaml", tmp_path / "avg_model.pt", tmp_path / "nawsv.pt")
    wav = torch.randn(1, 24000, generator=torch.Generator().manual_seed(6))
    expected = wespeaker_embed(model, configs, wav)
    with torch.no_grad():
        got = load_speaker_model(out)(wav)
    difference = (got - expected).abs().max().item()
    print(f"Base+ geometry: max |diff| {difference:.3g} (embedding scale {expected.abs().max().item():.3g})")
    assert difference <= TOLERANCE
