"""Every backbone (WavLM, HuBERT, wav2vec 2.0; post-LN and pre-LN) through warm-up, fine-tuning, extraction and export.

Each architecture is a small random model saved with ``save_pretrained`` and used as the "pre-trained" dir. The
trainer runs in-process (two epochs per phase, LayerDrop off so that every layer sees every step): the parameters
that change in each epoch must be exactly those the schedule trains.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nawsv.api import Verifier
from nawsv.data.augment import Augmenter
from nawsv.data.noise_bank import NoiseBank
from nawsv.data.store import UtteranceStore
from nawsv.export.onnx import onnx_runner
from nawsv.export.package import export_model
from nawsv.models.config import PRESETS, SSLConfig, resolve_preset
from nawsv.models.ssl import build_student, load_encoder_state
from nawsv.models.speaker import load_speaker_model
from nawsv.train import checkpoint as ckpt
from nawsv.train.distributed import DistContext
from nawsv.train.finetune import FinetuneConfig, FinetuneTask
from nawsv.train.loop import Trainer
from nawsv.train.warmup import WarmupConfig, WarmupTask
from nawsv.utils.config import load_config
from nawsv.utils.seeding import seed_everything
from tests.ssl_models import ARCH_IDS, ARCHS, save_arch

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
# ONNX export costs several seconds per model: one post-LN and one pre-LN model, two families each.
ONNX_ARCHS = {("wavlm", "pre_ln"), ("hubert", "post_ln"), ("wav2vec2", "pre_ln")}
PHASE = ["epochs=2", "ssl.layerdrop=0.0", "run.keep_checkpoints=0"]


def _fit(task, cfg, out: Path) -> None:
    seed_everything(cfg.run.seed)
    Trainer(task, cfg.epochs, cfg.optim, cfg.run, out, DistContext()).fit("auto")


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=ARCHS, ids=ARCH_IDS)
def trained(request, train_data, tiny_configs, tmp_path_factory) -> dict:
    """Warm-up then fine-tuning of one architecture; returns the paths and the configs."""
    family, form = request.param
    root = tmp_path_factory.mktemp(f"{family}_{form}")
    pretrained = save_arch(root / "pretrained", family, form)
    store = UtteranceStore.from_data_dir(train_data["dev"])
    musan, rirs = NoiseBank.from_dir(train_data["musan_train"]), NoiseBank.from_dir(train_data["rirs"])
    warm_cfg = load_config(WarmupConfig, tiny_configs["warmup"], [f"ssl.pretrained={pretrained}", *PHASE,
                                                                   "adapter_only_epochs=1",
                                                                   "data.max_utts_per_speaker=2"])
    _fit(WarmupTask(warm_cfg, store, Augmenter(warm_cfg.augment, musan, None), DistContext()), warm_cfg,
         root / "warmup")
    fine_cfg = load_config(FinetuneConfig, tiny_configs["finetune"], [*PHASE, "frozen_ssl_epochs=1",
                                                                       "large_margin_epochs=1", "average_last=1",
                                                                       "data.batch_size=12"])
    _fit(FinetuneTask(fine_cfg, store, Augmenter(fine_cfg.augment, musan, rirs), DistContext(),
                      root / "warmup" / "student.pt"), fine_cfg, root / "finetune")
    return {"family": family, "form": form, "root": root, "pretrained": pretrained, "warm_cfg": warm_cfg}


def _modules(directory: Path, epoch: int) -> dict:
    return ckpt.load_checkpoint(directory / "checkpoints" / f"epoch_{epoch}.pt")["modules"]


def _changed(before: dict, after: dict, keys) -> set[str]:
    return {k for k in keys if not torch.equal(before[k], after[k])}


def test_warmup_trains_adapters_first_then_the_whole_student(trained) -> None:
    initial = build_student(trained["warm_cfg"].ssl).state_dict()
    epoch1, epoch2 = (_modules(trained["root"] / "warmup", e)["student"] for e in (1, 2))
    backbone = {k for k in initial if k.startswith("backbone.")}
    adapters = {k for k in initial if k.startswith("adapters.")}
    assert backbone and adapters and backbone | adapters == set(initial)
    assert _changed(initial, epoch1, backbone) == set()                        # epoch 1: adapters only ...
    assert {k for k in adapters if k.endswith("weight")} <= _changed(initial, epoch1, adapters)
    moved = _changed(epoch1, epoch2, backbone)                                 # ... epoch 2: the whole student
    every_layer = {k for k in backbone if ".layers." in k and ".feed_forward." in k}
    assert every_layer and every_layer <= moved
    assert any(k.startswith("backbone.feature_extractor.") for k in moved)    # the CNN trains too
    assert _changed(epoch1, epoch2, adapters)


def test_finetune_trains_the_backend_first_then_the_ssl_model(trained) -> None:
    student = load_encoder_state(trained["root"] / "warmup" / "student.pt")["state_dict"]
    epoch1, epoch2 = (_modules(trained["root"] / "finetune", e) for e in (1, 2))
    assert _changed(student, epoch1["ssl"], student) == set()                  # epoch 1: SSL frozen
    assert _changed(epoch1["backend"], epoch2["backend"], epoch2["backend"])  # the back-end trains throughout
    moved = _changed(epoch1["ssl"], epoch2["ssl"], student)                    # epoch 2: joint
    assert {k for k in student if ".feed_forward." in k and k.startswith("backbone.")} <= moved
    assert {k for k in student if k.startswith("adapters.") and k.endswith("weight")} <= moved


def test_the_backend_is_sized_by_the_front_end(trained) -> None:
    model = load_speaker_model(trained["root"] / "finetune" / "avg_model.pt")
    config = json.loads((trained["pretrained"] / "config.json").read_text())
    assert type(model.ssl.backbone).__name__.lower().startswith(config["model_type"])
    assert model.ssl.backbone.config.do_stable_layer_norm is (trained["form"] == "pre_ln")
    assert model.backend.layer_sum.weights.numel() == config["num_hidden_layers"] + 1 == model.ssl.num_hidden_states
    assert model.ssl.hidden_size == config["hidden_size"]


def test_export_round_trips_match_the_eager_model(trained, tmp_path: Path) -> None:
    avg = trained["root"] / "finetune" / "avg_model.pt"
    onnx = HAVE_ONNX and (trained["family"], trained["form"]) in ONNX_ARCHS
    export_model(avg, tmp_path, "both" if onnx else "torchscript")
    eager = load_speaker_model(avg)
    wav = 0.1 * torch.randn(2, 20_800, generator=torch.Generator().manual_seed(9))      # 1.3 s, not traced on
    with torch.inference_mode():
        expected = eager(wav)
        traced = torch.jit.load(str(tmp_path / "model.ts"))(wav)
    torch.testing.assert_close(traced, expected, atol=1e-4, rtol=0)
    if onnx:
        torch.testing.assert_close(onnx_runner(tmp_path / "model.onnx")(wav), expected, atol=1e-4, rtol=0)
    verifier = Verifier(tmp_path)
    a, b = wav.numpy()
    score = verifier.score(a, b)
    e = expected.numpy().astype(np.float64)
    assert score == pytest.approx(e[0] @ e[1] / np.linalg.norm(e[0]) / np.linalg.norm(e[1]), abs=1e-4)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_name_their_family_and_size(name) -> None:
    preset = resolve_preset(name)
    large = name.endswith("_large")
    assert name == "tiny" or name.startswith(preset.family)
    if name != "tiny":
        assert (preset.kwargs["num_hidden_layers"] + 1, preset.kwargs["hidden_size"]) == \
            ((25, 1024) if large else (13, 768))
        assert preset.kwargs["do_stable_layer_norm"] is large
    assert resolve_preset("base_plus") is PRESETS["wavlm_base_plus"]
    with pytest.raises(ValueError, match="wav2vec2_large"):
        SSLConfig(preset="hubert_xlarge")
