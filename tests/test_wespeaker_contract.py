"""Contracts of the WeSpeaker bridge that need no WeSpeaker: what its trainer calls, checked against hand computation.

The same modules inside WeSpeaker's real trainer are tested in tests/wespeaker/ (run in .venv-wespeaker).
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nawsv.integrations.wespeaker.modules import (NawsvAAMProjection, NawsvEcapaTdnn, NawsvHalfCosineLR,
                                                  NawsvSSLFrontend, build_projection, class_weights_in_label_order)
from nawsv.integrations.wespeaker.registry import nawsv_ecapa_tdnn, prepare_config
from nawsv.integrations.wespeaker.runs import DONE, checkpoint_for
from nawsv.integrations.wespeaker.train import device_list, split_batch
from nawsv.models.config import SSLConfig, num_frames
from nawsv.models.ssl import build_student, build_student_from_state, load_encoder_state, save_encoder
from nawsv.utils.errors import ConfigError, ExperimentError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def student_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("student") / "student.pt"
    save_encoder(build_student(SSLConfig(preset="tiny", adapter_dim=8, init_seed=5)), path)
    return path


def test_frontend_output_shape_and_size(student_file: Path) -> None:
    frontend = NawsvSSLFrontend(init=str(student_file), frozen=True)
    assert frontend.output_size() == 128 and frontend.num_hidden_states == 5          # tiny preset: H 128, 4 layers
    wav = torch.randn(3, 8000)
    hidden, lengths = frontend(wav, torch.full((3,), 8000))
    assert hidden.shape == (3, 5, num_frames(8000), 128)
    assert lengths.tolist() == [num_frames(8000)] * 3 == [24] * 3                    # (8000 - 400) // 320 + 1
    reference = build_student_from_state(load_encoder_state(student_file)).eval()
    with torch.no_grad():
        torch.testing.assert_close(hidden, reference(wav), rtol=0, atol=1e-5)          # the student, unchanged


def test_frozen_frontend_stays_in_eval_mode_without_grad(student_file: Path) -> None:
    frontend = NawsvSSLFrontend(init=str(student_file), frozen=True)
    frontend.train()                                                 # WeSpeaker's executor does this every epoch
    assert not frontend.ssl.training and not any(p.requires_grad for p in frontend.parameters())
    assert not frontend(torch.randn(2, 4000))[0].requires_grad


def test_trainable_frontend_masks_like_nawsv(student_file: Path) -> None:
    frontend = NawsvSSLFrontend(init=str(student_file), frozen=False, seed=11)      # LayerDrop 0 by default
    frontend.train()
    reference = build_student_from_state(load_encoder_state(student_file),
                                         SSLConfig(mask_time_prob=0.05, mask_time_length=10, mask_feature_prob=0.0,
                                                   layerdrop=0.0, adapter_dim=8)).train()
    wav = torch.randn(2, 16000)
    torch.manual_seed(0)                                                    # dropout draws
    ours = frontend(wav)[0]
    torch.manual_seed(0)
    theirs = reference(wav, mask=True, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert ours.requires_grad and all(p.requires_grad for p in frontend.parameters())


def test_frontend_rejects_bad_arguments(student_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="frame_shift"):
        NawsvSSLFrontend(init=str(student_file), frame_shift=10)
    with pytest.raises(ConfigError, match="resample_rate"):
        NawsvSSLFrontend(init=str(student_file), sample_rate=8000)
    with pytest.raises(ConfigError, match="neither"):
        NawsvSSLFrontend(init=str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="valid SSL options"):
        NawsvSSLFrontend(init=str(student_file), mask_prob=0.1)


def _brute_force_aam(emb, weight, labels, margin, scale, topk, topk_margin, class_weights) -> float:
    """The AAM + inter-top-k weighted cross-entropy, one scalar at a time."""
    total, norm = 0.0, 0.0
    for i in range(emb.shape[0]):
        cos = [float(F.cosine_similarity(emb[i], weight[c], dim=0)) for c in range(weight.shape[0])]
        y = int(labels[i])
        hardest = sorted((c for c in range(len(cos)) if c != y), key=lambda c: -cos[c])[:topk]
        logits = []
        for c, value in enumerate(cos):
            theta = math.acos(max(-1.0, min(1.0, value)))
            if c == y:
                value = math.cos(theta + margin)
            elif c in hardest:
                value = math.cos(theta - topk_margin)
            logits.append(scale * value)
        log_norm = math.log(sum(math.exp(v - max(logits)) for v in logits)) + max(logits)
        total += class_weights[y] * (log_norm - logits[y])
        norm += class_weights[y]
    return total / norm


def test_projection_returns_logits_and_nawsv_loss_and_updates_margin(tmp_path: Path) -> None:
    label_file = tmp_path / "utt2spk"
    label_file.write_text("u1 spkB\nu2 spkA\nu3 spkB\nu4 spkC\nu5 spkB\nu6 spkD\nu7 spkE\nu8 spkF\n")
    torch.manual_seed(3)
    projection = build_projection({"project_type": "nawsv_aam_intertopk", "embed_dim": 4, "num_class": 6,
                                   "do_lm": False, "topk": 2, "train_label": str(label_file)})
    assert isinstance(projection, NawsvAAMProjection)
    emb, labels = torch.randn(5, 4), torch.tensor([0, 1, 1, 3, 5])
    weights = [8 / 1, 8 / 3, 8 / 1, 8 / 1, 8 / 1, 8 / 1]                  # spkA..spkF: N / N_k, sorted by name
    logits, loss = projection(emb, labels)
    expected_cos = F.normalize(emb, dim=1) @ F.normalize(projection.weight.detach(), dim=1).t()
    torch.testing.assert_close(logits, expected_cos)
    assert float(loss.detach()) == pytest.approx(_brute_force_aam(emb, projection.weight.detach(), labels, 0.2, 30.0, 2, 0.1,
                                                         weights), rel=1e-5)
    projection.update(margin=0.4)                                 # what WeSpeaker's MarginScheduler calls
    assert projection.margin == 0.4
    assert float(projection(emb, labels)[1].detach()) == pytest.approx(
        _brute_force_aam(emb, projection.weight.detach(), labels, 0.4, 30.0, 2, 0.1, weights), rel=1e-5)


def test_projection_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown keys \\['easy_margin'\\]"):
        build_projection({"project_type": "nawsv_aam_intertopk", "embed_dim": 4, "num_class": 3,
                          "easy_margin": False, "class_weights": False})


def test_class_weights_follow_wespeaker_spk2id_order() -> None:
    pairs = [("a", "id3"), ("b", "id1"), ("c", "id3"), ("d", "id2"), ("e", "id3"), ("f", "id1")]
    # spk2id sorts the names: id1 -> 0 (2 utts), id2 -> 1 (1), id3 -> 2 (3); weight N / N_k with N = 6
    assert class_weights_in_label_order(pairs, 3).tolist() == pytest.approx([3.0, 6.0, 2.0])
    assert class_weights_in_label_order(pairs, 9).tolist() == pytest.approx([3.0, 6.0, 2.0] * 3)   # speed perturb
    with pytest.raises(ConfigError, match="num_class=4"):
        class_weights_in_label_order(pairs, 4)


def test_half_cosine_scheduler_spans_the_three_runs() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1.0)
    scheduler = NawsvHalfCosineLR(optimizer, num_epochs=5, epoch_iter=4, initial_lr=5e-5, final_lr=5e-7,
                                  total_epochs=27, epoch_offset=20, scale_ratio=0.375, base_batch_size=24)

    def paper(epoch: int) -> float:
        return 5e-7 + 0.5 * (5e-5 - 5e-7) * (1 + math.cos(math.pi * epoch / 27))

    for current_iter, epoch in ((0, 20), (3, 20), (4, 21), (19, 24)):
        scheduler.step(current_iter)
        assert scheduler.get_lr() == pytest.approx(paper(epoch), rel=1e-12)
        assert optimizer.param_groups[0]["lr"] == scheduler.get_lr()
    assert paper(20) == pytest.approx(8.3e-6, rel=0.01)                                  # spec table, epoch 20
    doubled = NawsvHalfCosineLR(optimizer, num_epochs=5, epoch_iter=4, initial_lr=5e-5, final_lr=5e-7,
                                total_epochs=27, epoch_offset=20, scale_ratio=0.75, base_batch_size=24)
    assert doubled.get_lr() == pytest.approx(2 * paper(20), rel=1e-12)    # global batch 48: WeSpeaker's linear rule
    wespeaker_base = NawsvHalfCosineLR(optimizer, num_epochs=5, epoch_iter=4, initial_lr=5e-5, final_lr=5e-7,
                                       total_epochs=27, epoch_offset=20, scale_ratio=0.375)
    assert wespeaker_base.get_lr() == pytest.approx(0.375 * paper(20), rel=1e-12)     # LRs given for batch 64
    with pytest.raises(ConfigError, match="exceeds total_epochs"):
        NawsvHalfCosineLR(optimizer, num_epochs=8, epoch_iter=4, initial_lr=5e-5, final_lr=5e-7, total_epochs=27,
                          epoch_offset=20)


def test_ecapa_model_is_nawsv_ecapa_on_hidden_states() -> None:
    model = NawsvEcapaTdnn(feat_dim=16, embed_dim=8, channels=16, num_hidden_states=3).eval()
    assert model(torch.randn(2, 3, 20, 16)).shape == (2, 8)
    with pytest.raises(ConfigError, match="num_hidden_states"):
        NawsvEcapaTdnn(feat_dim=16)


def _config(student_file: Path, **dataset_args) -> dict:
    return {"model": "NAWSV_ECAPA_TDNN", "model_args": {"embed_dim": 8}, "train_label": "data/utt2spk",
            "projection_args": {"project_type": "nawsv_aam_intertopk"}, "scheduler": "NawsvHalfCosineLR",
            "dataset_args": {"frontend": "nawsv_ssl", "resample_rate": 16000, "cmvn": False,
                             "nawsv_ssl_args": {"init": str(student_file)}, **dataset_args}}


def test_prepare_config_fills_and_checks(student_file: Path) -> None:
    configs = prepare_config(_config(student_file))
    assert configs["model_args"]["num_hidden_states"] == 5
    assert configs["projection_args"]["train_label"] == "data/utt2spk"
    with pytest.raises(ConfigError, match="dataset_args.cmvn must be false"):
        prepare_config(_config(student_file, cmvn=True))
    bad = _config(student_file)
    del bad["dataset_args"]["cmvn"]                                   # WeSpeaker's default is cmvn on
    with pytest.raises(ConfigError, match="cmvn"):
        prepare_config(bad)
    typo = dict(_config(student_file), projection_args={"project_type": "nawsv_aam_intertop"})
    with pytest.raises(ConfigError, match="unknown nawsv projection .*'nawsv_aam_intertopk'"):
        prepare_config(typo)
    other = dict(_config(student_file), model="ECAPA_TDNN_GLOB_c512")
    with pytest.raises(ConfigError, match="cannot take the nawsv_ssl"):
        prepare_config(other)


def test_core_and_contracts_import_neither_wespeaker_nor_torchaudio() -> None:
    code = ("import sys, nawsv.api, nawsv.bin.train, nawsv.bin.extract, nawsv.bin.score, "
            "nawsv.integrations.wespeaker.modules, nawsv.integrations.wespeaker.registry, "
            "nawsv.integrations.wespeaker.train, nawsv.integrations.wespeaker.runs, "
            "nawsv.integrations.wespeaker.cpu_shim; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('wespeaker', 'torchaudio', 's3prl')); "
            "print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("nproc", [1, 2, 4, 8])
def test_launcher_gives_each_local_process_a_gpu_and_a_share_of_the_global_batch(nproc: int) -> None:
    gpus = device_list(None, nproc)
    assert [int(gpus[local_rank]) for local_rank in range(nproc)] == list(range(nproc))    # WeSpeaker's indexing
    assert device_list("[4,5,6,7,0,1,2,3]", nproc) == [4, 5, 6, 7, 0, 1, 2, 3]             # its run.sh's --gpus form
    for world_size in (nproc, 2 * nproc):                                                   # one node, two nodes
        configs = {"global_batch_size": 48, "dataloader_args": {"num_workers": 1}}
        split_batch(configs, world_size)
        assert configs["dataloader_args"]["batch_size"] * world_size == 48                 # scale_ratio 48/64 always


def test_launcher_refuses_what_wespeaker_would_misread() -> None:
    with pytest.raises(ConfigError, match=r"gpus \[0, 1, 2, 3\] names 4 device\(s\) for 8 processes"):
        device_list("[0,1,2,3]", 8)
    with pytest.raises(ConfigError, match="not divisible by the 5 processes"):
        split_batch({"global_batch_size": 24}, 5)
    with pytest.raises(ConfigError, match="keep global_batch_size only"):
        split_batch({"global_batch_size": 24, "dataloader_args": {"batch_size": 6}}, 4)
    plain = {"dataloader_args": {"batch_size": 6}}            # a WeSpeaker config of its own: per process, unchanged
    split_batch(plain, 4)
    assert plain["dataloader_args"]["batch_size"] == 6


def test_sync_batchnorm_with_nccl_as_nawsv_and_plain_batchnorm_on_cpus(monkeypatch) -> None:
    import torch.distributed as dist

    args = {"feat_dim": 16, "embed_dim": 8, "channels": 16, "num_hidden_states": 3}
    kinds = lambda model: {type(m).__name__ for m in model.modules() if "BatchNorm" in type(m).__name__}  # noqa: E731
    assert kinds(nawsv_ecapa_tdnn(**args)) == {"BatchNorm1d"}                     # one process
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 4)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert kinds(nawsv_ecapa_tdnn(**args)) == {"BatchNorm1d"}                     # CPUs (the shim): no CPU kernel
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    assert kinds(nawsv_ecapa_tdnn(**args)) == {"SyncBatchNorm"}


def test_a_run_that_died_before_its_first_save_restarts_and_others_resume(tmp_path: Path) -> None:
    run = tmp_path / "frozen"
    (run / "models").mkdir(parents=True)                      # what WeSpeaker's rank 0 leaves before epoch 1 ends
    assert checkpoint_for(run) is None and not (run / "models").exists()
    (run / "models").mkdir()
    for epoch in (2, 10, 9):
        (run / "models" / f"model_{epoch}.pt").write_bytes(b"x")
    assert checkpoint_for(run) == str((run / "models" / "model_10.pt").absolute())
    (run / "models" / "final_model.pt").symlink_to("model_10.pt")
    assert checkpoint_for(run) == DONE
    odd = tmp_path / "odd"
    (odd / "models").mkdir(parents=True)
    (odd / "models" / "notes.txt").write_text("mine")
    with pytest.raises(ExperimentError, match="notes.txt.*move it away"):
        checkpoint_for(odd)
    assert (odd / "models" / "notes.txt").read_text() == "mine"
