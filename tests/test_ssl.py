"""SSL student/teacher: full pre-trained loading, hidden-state conventions, adapters, masking, save/load.

Every architecture (WavLM, HuBERT, wav2vec 2.0, each post-LN and pre-LN) is a small random model saved with
``save_pretrained`` and loaded back as a "pre-trained" directory.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, Wav2Vec2Config, Wav2Vec2ForPreTraining, WavLMModel

from nawsv.models.adapter import attach_adapters
from nawsv.models.config import SSLConfig, num_frames
from nawsv.models.masking import apply_spec_masks, span_mask, span_starts
from nawsv.models.ssl import (RELEASED_UNCOPIED, build_student, build_student_from_state, build_teacher,
                              encoder_state, load_encoder_state, save_encoder)
from nawsv.utils.errors import ConfigError, ExperimentError
from tests.ssl_models import ARCH_IDS, ARCHS, MODELS, PRE_LN, SMALL, save_arch, save_hf_dir


@pytest.fixture(scope="module")
def post_ln_dir(tmp_path_factory) -> Path:
    return save_hf_dir(tmp_path_factory.mktemp("wavlm_post_ln"))


@pytest.fixture(scope="module")
def pre_ln_dir(tmp_path_factory) -> Path:
    return save_hf_dir(tmp_path_factory.mktemp("wavlm_pre_ln"), **PRE_LN)


@pytest.fixture(scope="module", params=ARCHS, ids=ARCH_IDS)
def arch_dir(request, tmp_path_factory) -> Path:
    """Every family in both layer-norm forms (the WavLM dirs are the two fixtures above)."""
    family, form = request.param
    if family == "wavlm":
        return request.getfixturevalue(f"{form}_dir")
    return save_arch(tmp_path_factory.mktemp(f"{family}_{form}"), family, form)


@pytest.fixture(scope="module", params=list(MODELS))
def family_dir(request, tmp_path_factory) -> Path:
    """The post-LN model of every family (for tests where the layer-norm form does not matter)."""
    if request.param == "wavlm":
        return request.getfixturevalue("post_ln_dir")
    return save_arch(tmp_path_factory.mktemp(f"{request.param}_post_ln"), request.param, "post_ln")


@pytest.fixture(scope="module")
def wav() -> torch.Tensor:
    return torch.randn(2, 12000, generator=torch.Generator().manual_seed(5))  # 0.75 s -> 37 frames


def _hf_reference(directory: Path, wav: torch.Tensor):
    model = AutoModel.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(wav, output_hidden_states=True)


def _checkpoint(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _no_dropout(module: nn.Module) -> None:
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = 0.0
        if hasattr(sub, "dropout") and isinstance(sub.dropout, float):
            sub.dropout = 0.0


def test_every_pretrained_key_is_loaded_into_student_and_teacher(arch_dir):
    checkpoint = _checkpoint(arch_dir)
    cfg = SSLConfig(pretrained=str(arch_dir))
    for model in (build_student(cfg), build_teacher(cfg)):
        backbone = model.backbone.state_dict()
        assert model.wavlm is model.backbone                       # the former attribute name still works
        assert set(backbone) == set(checkpoint)
        for key, value in checkpoint.items():
            assert torch.equal(backbone[key], value), key
    student_keys = set(build_student(SSLConfig(pretrained=str(arch_dir))).state_dict())
    extra = {k for k in student_keys if not k.startswith("backbone.")}
    assert extra and all(k.startswith("adapters.") for k in extra)
    assert {k[len("backbone."):] for k in student_keys - extra} == set(checkpoint)


def test_each_family_and_form_builds_its_own_hf_class(arch_dir):
    config = json.loads((arch_dir / "config.json").read_text())
    student = build_student(SSLConfig(pretrained=str(arch_dir)))
    assert type(student.backbone) is MODELS[config["model_type"]][1]
    assert student.backbone.config.do_stable_layer_norm is config["do_stable_layer_norm"]
    assert student.num_hidden_states == 4 and student.hidden_size == 64


@pytest.mark.parametrize("drop", ["encoder.pos_conv_embed.conv.parametrizations.weight.original0",
                                  "encoder.layer_norm.weight", "masked_spec_embed"])
def test_checkpoint_missing_a_key_is_a_clear_error(arch_dir, tmp_path, drop):
    broken = tmp_path / "broken"
    shutil.copytree(arch_dir, broken)
    state = _checkpoint(broken)
    del state[drop]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=drop.replace(".", r"\.")):
        build_student(SSLConfig(pretrained=str(broken)))


@pytest.mark.parametrize("extra", ["classifier.weight", "encoder.layers.9.attention.k_proj.weight"])
def test_checkpoint_with_an_unexpected_key_is_an_error(arch_dir, tmp_path, extra):
    broken = tmp_path / "extra"
    shutil.copytree(arch_dir, broken)
    state = _checkpoint(broken)
    state[extra] = torch.zeros(3)
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=extra.replace(".", r"\.")):
        build_teacher(SSLConfig(pretrained=str(broken)))


def test_wav2vec2_pretraining_checkpoint_loads_without_its_heads(tmp_path, wav, caplog):
    """facebook/wav2vec2-base is a Wav2Vec2ForPreTraining checkpoint: encoder under ``wav2vec2.``, plus heads."""
    torch.manual_seed(5)
    full = Wav2Vec2ForPreTraining(Wav2Vec2Config(**SMALL, codevector_dim=16, proj_codevector_dim=16,
                                                 num_codevectors_per_group=8))
    full.save_pretrained(tmp_path)
    stored = set(_checkpoint(tmp_path))
    assert any(k.startswith("wav2vec2.") for k in stored) and any(k.startswith("quantizer.") for k in stored)
    with caplog.at_level(logging.INFO, logger="nawsv"):
        teacher = build_teacher(SSLConfig(pretrained=str(tmp_path)))
    assert "pre-training heads" in caplog.text
    for key, value in full.wav2vec2.state_dict().items():
        assert torch.equal(teacher.backbone.state_dict()[key], value), key
    state = _checkpoint(tmp_path)
    state["lm_head.weight"] = torch.zeros(3)                  # a fine-tuned head is not a pre-training head
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="lm_head.weight"):
        build_teacher(SSLConfig(pretrained=str(tmp_path)))


def test_not_a_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        build_student(SSLConfig(pretrained=str(tmp_path)))


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "data2vec-audio"}))
    with pytest.raises(ConfigError, match=r"'data2vec-audio' is not a supported.*hubert, wav2vec2, wavlm"):
        build_student(SSLConfig(pretrained=str(tmp_path)))


def test_hf_adapters_are_refused(tmp_path):
    save_hf_dir(tmp_path, "wav2vec2", adapter_attn_dim=8)
    with pytest.raises(ConfigError, match="adapter_attn_dim"):
        build_student(SSLConfig(pretrained=str(tmp_path)))


def test_another_cnn_front_end_is_refused(tmp_path):
    save_hf_dir(tmp_path, "hubert", conv_stride=[5, 2, 2, 2, 2, 2, 1])         # 10-ms frames: segments would be wrong
    with pytest.raises(ConfigError, match=r"conv_stride \[5, 2, 2, 2, 2, 2, 1\]\) is not the 20-ms one"):
        build_teacher(SSLConfig(pretrained=str(tmp_path)))


def test_zero_init_student_equals_teacher_on_all_hidden_states(arch_dir, wav):
    cfg = SSLConfig(pretrained=str(arch_dir), zero_init_adapters=True)
    student, teacher = build_student(cfg).eval(), build_teacher(cfg)
    with torch.no_grad():
        s, t = student(wav), teacher(wav)
    assert s.shape == (2, 4, num_frames(12000), 64) == (2, 4, 37, 64)
    torch.testing.assert_close(s, t, atol=1e-5, rtol=0)     # trainable weights may pick other CPU kernels
    student.requires_grad_(False)
    with torch.no_grad():
        torch.testing.assert_close(student(wav), t, atol=0, rtol=0)     # same kernels: a zero adapter adds 0.0


def test_hidden_states_follow_hf_indexing(arch_dir, wav):
    """Post-LN: HF's hidden states 0..L; pre-LN: 0..L-1, then the encoder output after its final LayerNorm."""
    reference = _hf_reference(arch_dir, wav)
    states = build_teacher(SSLConfig(pretrained=str(arch_dir)))(wav)
    assert states.shape[1] == len(reference.hidden_states) == 4
    for index in range(states.shape[1] - 1):
        torch.testing.assert_close(states[:, index], reference.hidden_states[index], atol=1e-5, rtol=0)
    torch.testing.assert_close(states[:, -1], reference.last_hidden_state, atol=1e-5, rtol=0)
    if not reference.hidden_states[-1].equal(reference.last_hidden_state):           # pre-LN, transformers 5
        assert json.loads((arch_dir / "config.json").read_text())["do_stable_layer_norm"]


def _capture_inputs(module: nn.Module, store: list) -> None:
    module.register_forward_pre_hook(lambda m, args: store.append(args[0].detach().clone()))


def _ffn(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    ff = layer.feed_forward
    return ff.output_dense(ff.intermediate_act_fn(ff.intermediate_dense(x)))


def _adapter(adapter: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Up(ELU(Down(x))) written out with the adapter's weights."""
    down = x @ adapter.down.weight.t() + adapter.down.bias
    return nn.functional.elu(down) @ adapter.up.weight.t() + adapter.up.bias


@pytest.mark.parametrize("family", list(MODELS))
def test_adapter_sits_on_the_ffn_branch_post_ln(family, tmp_path, wav):
    directory = save_arch(tmp_path, family, "post_ln")
    student = build_student(SSLConfig(pretrained=str(directory))).eval()
    layer, adapter = student.backbone.encoder.layers[1], student.adapters[1]
    ffn_in, final_ln_in = [], []
    _capture_inputs(layer.feed_forward, ffn_in)
    _capture_inputs(layer.final_layer_norm, final_ln_in)
    with torch.no_grad():
        student(wav)
        x = ffn_in[0]
        expected = x + _ffn(layer, x) + _adapter(adapter, x)
    torch.testing.assert_close(final_ln_in[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(MODELS))
def test_adapter_sits_on_the_ffn_branch_pre_ln(family, tmp_path, wav):
    directory = save_arch(tmp_path, family, "pre_ln")
    student = build_student(SSLConfig(pretrained=str(directory))).eval()
    layer, adapter = student.backbone.encoder.layers[0], student.adapters[0]
    residual, ffn_in, outputs = [], [], []
    _capture_inputs(layer.final_layer_norm, residual)
    _capture_inputs(layer.feed_forward, ffn_in)
    layer.register_forward_hook(lambda m, a, out: outputs.append(_first(out).detach().clone()))
    with torch.no_grad():
        student(wav)
        torch.testing.assert_close(ffn_in[0], layer.final_layer_norm(residual[0]))
        x = ffn_in[0]
        expected = residual[0] + _ffn(layer, x) + _adapter(adapter, x)
    torch.testing.assert_close(outputs[0], expected, atol=1e-5, rtol=0)


def _first(output):
    """A layer's hidden state (WavLM layers, and all layers in transformers 4, return tuples)."""
    return output[0] if isinstance(output, tuple) else output


def test_nonzero_adapters_change_the_output(arch_dir, wav):
    cfg = SSLConfig(pretrained=str(arch_dir))
    student, teacher = build_student(cfg).eval(), build_teacher(cfg)
    with torch.no_grad():
        s, t = student(wav), teacher(wav)
    torch.testing.assert_close(s[:, 0], t[:, 0], atol=1e-6, rtol=0)       # adapters act inside the layers only
    assert (s[:, 1:] - t[:, 1:]).abs().max() > 1e-4
    hidden, width, layers = 64, cfg.adapter_dim, 3
    assert sum(p.numel() for p in student.adapter_parameters()) == layers * (2 * hidden * width + width + hidden)
    assert {id(p) for p in student.adapter_parameters()}.isdisjoint(id(p) for p in student.backbone_parameters())
    assert len(list(student.parameters())) == len(student.adapter_parameters()) + len(student.backbone_parameters())


def test_adapter_parameter_count_for_base_plus_sizes():
    layers = nn.ModuleList(nn.Module() for _ in range(12))
    for layer in layers:
        layer.feed_forward = nn.Identity()
    adapters = attach_adapters(layers, 768, 64)
    assert sum(p.numel() for p in adapters.parameters()) == 12 * (768 * 64 + 64 + 64 * 768 + 768) == 1_189_632
    assert torch.equal(adapters[0].down.bias, torch.zeros(64))
    assert 0.015 < adapters[0].down.weight.std().item() < 0.025       # HF Linear init: normal(0, 0.02)


def test_teacher_is_frozen_and_stays_in_eval_mode(family_dir, wav):
    teacher = build_teacher(SSLConfig(pretrained=str(family_dir)))
    parent = nn.ModuleDict({"teacher": teacher, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training and not teacher.training
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    out = teacher(wav)
    assert not out.requires_grad
    with pytest.raises(ValueError, match="never masks"):
        teacher(wav, mask=True, generator=torch.Generator())


def test_hf_masking_never_fires(family_dir, wav):
    student = build_student(SSLConfig(pretrained=str(family_dir), mask_time_prob=0.5, mask_feature_prob=0.5,
                                      layerdrop=0.0))
    assert student.backbone.config.layerdrop == 0.0
    _no_dropout(student)
    student.train()
    with torch.no_grad():
        train_out = student(wav)
        eval_out = student.eval()(wav)
        masked = student.train()(wav, mask=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(train_out, eval_out, atol=1e-6, rtol=0)
    assert (masked - train_out).abs().max() > 1e-3


def test_masking_is_deterministic_given_the_generator(post_ln_dir, wav):
    student = build_student(SSLConfig(pretrained=str(post_ln_dir))).eval()
    with pytest.raises(ValueError, match="Generator"):
        student(wav, mask=True)
    with torch.no_grad():
        a = student(wav, mask=True, generator=torch.Generator().manual_seed(7))
        b = student(wav, mask=True, generator=torch.Generator().manual_seed(7))
        c = student(wav, mask=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_span_counts_follow_the_probabilistic_rounding():
    g = torch.Generator().manual_seed(0)
    # phase 1 time masks on 149 frames: int(0.1*149/5 + u) = int(2.98 + u) -> 3 unless u < 0.02; min 2
    starts = span_starts(4000, 149, 0.1, 5, 2, g)
    counts = torch.tensor([len(s) for s in starts])
    assert set(counts.tolist()) <= {2, 3}
    assert abs((counts == 3).float().mean().item() - 0.98) < 0.015
    assert all(len(set(s.tolist())) == len(s) and s.min() >= 0 and s.max() <= 149 - 5 for s in starts)
    # phase 2 time masks: int(0.745 + u) in {0, 1} -> always the minimum of 2 spans
    assert {len(s) for s in span_starts(500, 149, 0.05, 10, 2, g)} == {2}
    # phase 1 channel masks on 768 channels: int(3.84 + u) -> 4 with probability 0.84, no minimum
    channel = torch.tensor([len(s) for s in span_starts(4000, 768, 0.05, 10, 0, g)])
    assert set(channel.tolist()) <= {3, 4}
    assert abs((channel == 4).float().mean().item() - 0.84) < 0.03
    # an axis shorter than a span gets no spans; probability 0 means no masking despite a minimum
    assert {len(s) for s in span_starts(50, 4, 0.5, 5, 2, g)} == {0}
    assert {len(s) for s in span_starts(50, 149, 0.0, 5, 2, g)} == {0}
    # the minimum is capped so that the spans fit: 3 spans of 5 on 12 frames -> 12 // 5 = 2
    assert {len(s) for s in span_starts(50, 12, 0.01, 5, 3, g)} == {2}


def test_apply_spec_masks_replaces_time_spans_and_zeroes_channel_spans():
    cfg = SSLConfig(mask_time_prob=0.2, mask_time_length=3, mask_feature_prob=0.2, mask_feature_length=2)
    hidden = torch.randn(3, 20, 16) + 5.0
    embed = torch.arange(16, dtype=torch.float32) - 100.0
    out = apply_spec_masks(hidden, embed, cfg, torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)
    time_mask = span_mask(3, 20, 0.2, 3, 2, replay)
    channel_mask = span_mask(3, 16, 0.2, 2, 0, replay)
    assert time_mask.any() and channel_mask.any()
    for b in range(3):
        for t in range(20):
            for h in range(16):
                if channel_mask[b, h]:
                    expected = 0.0
                elif time_mask[b, t]:
                    expected = embed[h].item()
                else:
                    expected = hidden[b, t, h].item()
                assert out[b, t, h].item() == expected
    for b, starts in enumerate(span_starts(3, 20, 0.2, 3, 2, torch.Generator().manual_seed(3))):
        assert time_mask[b].sum() <= 3 * len(starts)
        assert all(time_mask[b, s:s + 3].all() for s in starts.tolist())


def test_student_state_round_trip_without_the_pretrained_dir(arch_dir, wav, tmp_path):
    student = build_student(SSLConfig(pretrained=str(arch_dir))).eval()
    with torch.no_grad():
        student.adapters[0].up.bias.add_(0.5)          # a "trained" student differs from any fresh build
        student.backbone.masked_spec_embed.add_(1.0)
    save_encoder(student, tmp_path / "student.pt")
    state = load_encoder_state(tmp_path / "student.pt")
    phase2 = SSLConfig(mask_time_prob=0.05, mask_time_length=10, mask_feature_prob=0.0)
    rebuilt = build_student_from_state(state, phase2).eval()
    assert rebuilt.cfg.mask_time_length == 10 and rebuilt.cfg.mask_feature_prob == 0.0
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(wav), student(wav), atol=0, rtol=0)
    for key, value in student.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    with pytest.raises(ExperimentError, match="adapter_dim"):
        build_student_from_state(state, SSLConfig(adapter_dim=32))
    with pytest.raises(ExperimentError, match="does not exist"):
        load_encoder_state(tmp_path / "missing.pt")
    assert type(rebuilt.backbone) is type(student.backbone)


def test_students_saved_in_the_v1_format_still_load(post_ln_dir, wav):
    """Before HuBERT / wav2vec 2.0: format v1, the config under "wavlm_config", weights under ``wavlm.``."""
    student = build_student(SSLConfig(pretrained=str(post_ln_dir))).eval()
    state = encoder_state(student)
    config = state.pop("backbone_config")
    del config["model_type"]
    v1 = dict(state, format="nawsv.ssl_encoder.v1", wavlm_config=config,
              state_dict={k.replace("backbone.", "wavlm.", 1): v for k, v in state["state_dict"].items()})
    assert all(k.startswith(("wavlm.", "adapters.")) for k in v1["state_dict"])
    rebuilt = build_student_from_state(v1).eval()
    assert isinstance(rebuilt.backbone, WavLMModel)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(wav), student(wav), atol=0, rtol=0)


def test_random_init_is_labelled_seeded_and_leaves_global_rng_alone(caplog, wav):
    rng_before = torch.get_rng_state()
    with caplog.at_level(logging.WARNING):
        student = build_student(SSLConfig(zero_init_adapters=True)).eval()
        teacher = build_teacher(SSLConfig())
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert "RANDOM-INIT" in caplog.text and student.random_init and teacher.random_init
    assert encoder_state(student)["random_init"] is True
    for key, value in teacher.backbone.state_dict().items():
        assert torch.equal(student.backbone.state_dict()[key], value), key
    with torch.no_grad():
        states = student(wav)
    assert states.shape == (2, 5, 37, 128)                    # tiny preset: 4 layers, 128 channels, 20 ms frames
    assert math.isclose(num_frames(48000), 149) and num_frames(96000) == 299


def _repeated_states(states: torch.Tensor) -> list[int]:
    """Indices k whose hidden state equals state k-1 exactly (a dropped layer), per utterance 0."""
    return [k for k in range(1, states.shape[1]) if torch.equal(states[0, k], states[0, k - 1])]


def test_layerdrop_defaults_to_the_checkpoint_value_and_acts_in_train_mode_only(family_dir, wav):
    assert build_student(SSLConfig(pretrained=str(family_dir))).backbone.config.layerdrop == pytest.approx(0.1)
    student = build_student(SSLConfig(pretrained=str(family_dir), layerdrop=0.5))
    wavlm = isinstance(student.backbone, WavLMModel)
    _no_dropout(student)
    dropped: list[int] = []
    with torch.no_grad():
        for seed in range(24):
            torch.manual_seed(seed)
            states = student.train()(wav)
            assert states.shape[1] == 4                  # 13 states for Base: always L+1, dropped or not
            dropped += _repeated_states(states)
            assert _repeated_states(student.eval()(wav)) == []
    droppable = 2 if wavlm else 3                        # HF's rule: WavLM never drops layer 1 (as released)
    assert (1 in dropped) is not wavlm
    expected = droppable * 24 * 0.5                      # binomial(droppable x 24 draws, 0.5): +- 4 sd
    assert abs(len(dropped) - expected) <= 4 * math.sqrt(droppable * 24 * 0.25)
    torch.manual_seed(0)
    with torch.no_grad():
        assert _repeated_states(build_student(SSLConfig(pretrained=str(family_dir), layerdrop=0.0)).train()(wav)) == []


def _layer(student, index: int, hidden: torch.Tensor, first_input: torch.Tensor) -> torch.Tensor:
    """Encoder layer ``index`` on ``hidden``, as the encoder calls it (WavLM layers share layer 1's position bias)."""
    layers = student.backbone.encoder.layers
    if isinstance(student.backbone, WavLMModel):
        _, bias = layers[0](first_input)
        return layers[index](hidden, position_bias=bias, index=index)[0]
    return _first(layers[index](hidden))


def test_dropped_layer_state_is_the_previous_one_and_the_rest_follow_from_it(family_dir, wav):
    student = build_student(SSLConfig(pretrained=str(family_dir), layerdrop=0.5, zero_init_adapters=True))
    _no_dropout(student)
    with torch.no_grad():
        for seed in range(40):
            torch.manual_seed(seed)
            states = student.train()(wav)
            if _repeated_states(states) == [2]:          # layer 2 dropped, layer 3 ran on layer 1's output
                break
        else:
            pytest.fail("no draw dropped exactly layer 2")
        expected = _layer(student, 2, states[:, 2], states[:, 0])
    torch.testing.assert_close(states[:, 3], expected, atol=1e-5, rtol=1e-5)


def test_released_partial_init_leaves_exactly_three_modules_uncopied(family_dir, tmp_path, caplog):
    trained = tmp_path / "trained"                   # every tensor away from its init value (LayerNorm 1/0 etc.)
    shutil.copytree(family_dir, trained)
    generator = torch.Generator().manual_seed(3)
    checkpoint = {k: v + 0.5 + torch.rand(v.shape, generator=generator) for k, v in _checkpoint(family_dir).items()}
    save_file(checkpoint, str(trained / "model.safetensors"))
    post_ln_dir = trained
    with caplog.at_level(logging.WARNING):
        student = build_student(SSLConfig(pretrained=str(post_ln_dir), init="released_partial"))
    assert "released_partial" in caplog.text
    backbone = student.backbone.state_dict()
    differ = {key for key, value in checkpoint.items() if not torch.equal(backbone[key], value)}
    uncopied = {key for key in checkpoint if key.startswith(RELEASED_UNCOPIED)}
    assert differ == uncopied
    assert {k.split(".")[0] + "." + k.split(".")[1] if k.startswith("encoder") else k for k in uncopied} == \
        {"encoder.pos_conv_embed", "encoder.layer_norm", "masked_spec_embed"}
    assert torch.equal(backbone["encoder.layer_norm.weight"], torch.ones(64))
    assert torch.equal(backbone["encoder.layer_norm.bias"], torch.zeros(64))
    assert 0.0 <= float(backbone["masked_spec_embed"].min()) and float(backbone["masked_spec_embed"].max()) < 1.0
    assert build_teacher(SSLConfig(pretrained=str(post_ln_dir), init="released_partial")).backbone.state_dict().keys() \
        == checkpoint.keys()
    teacher = build_teacher(SSLConfig(pretrained=str(post_ln_dir), init="released_partial")).backbone.state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in checkpoint.items())   # the teacher is always complete


def _autograd_nodes(root) -> set[str]:
    seen, names, stack = set(), set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


def test_frozen_backbone_never_backpropagates_through_the_cnn(family_dir, wav):
    student = build_student(SSLConfig(pretrained=str(family_dir), layerdrop=0.0))
    student.set_backbone_trainable(False)
    student.train()
    inputs = wav.clone()
    states = student(inputs, mask=True, generator=torch.Generator().manual_seed(1))
    nodes = _autograd_nodes(states.sum().grad_fn)
    assert "ConvolutionBackward0" not in nodes           # neither the CNN nor the positional conv is in the graph
    states.sum().backward()
    assert not inputs.requires_grad and inputs.grad is None
    assert all(p.grad is None for p in student.backbone.feature_extractor.parameters())
    assert all(p.grad is not None for p in student.adapter_parameters())
    student.zero_grad(set_to_none=True)
    student.set_backbone_trainable(True)
    states = student(wav.clone(), mask=True, generator=torch.Generator().manual_seed(1))
    assert "ConvolutionBackward0" in _autograd_nodes(states.sum().grad_fn)
    states.sum().backward()
    assert all(p.grad is not None for p in student.backbone.feature_extractor.parameters())
