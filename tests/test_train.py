"""Stages 3-4: exact resumption after a kill, freeze schedules, large-margin stage, torchrun, non-finite steps."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nawsv.train import checkpoint as ckpt
from nawsv.train.schedule import learning_rate
from tests.conftest import ROOT, ReferenceWarmup, kill_when, reference_warmup_argv, run_module

pytestmark = pytest.mark.slow


def warmup_args(train_data: dict, config: Path, exp: Path, *extra: str) -> list[str]:
    return ["warmup", "--config", str(config), "--train_data", str(train_data["dev"]), "--musan",
            str(train_data["musan_train"]), "--exp_dir", str(exp), "--device", "cpu", *extra]


def finetune_args(train_data: dict, config: Path, exp: Path, init: str, *extra: str) -> list[str]:
    return ["finetune", "--config", str(config), "--train_data", str(train_data["dev"]), "--musan",
            str(train_data["musan_train"]), "--rirs", str(train_data["rirs"]), "--init", init,
            "--exp_dir", str(exp), "--device", "cpu", *extra]


def tensors(path: Path, key: str) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state[key] if key else state


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], torch.Tensor):
            assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("marker", ["epoch_1.json", "step_1_1.json"])
def test_killed_warmup_resumes_bit_identical(train_data, tiny_configs, reference_warmup: ReferenceWarmup,
                                             tmp_path: Path, marker: str) -> None:
    full, killed = reference_warmup.exp, tmp_path / "killed"
    argv = reference_warmup_argv(train_data, tiny_configs["warmup"], killed)
    kill_when("nawsv.bin.train", argv, (killed / "checkpoints" / marker).exists)
    assert not (killed / "student.pt").exists()
    proc = run_module("nawsv.bin.train", *argv, check=True)
    assert "resumed from" in proc.stderr
    assert_same_state(tensors(full / "student.pt", "state_dict"), tensors(killed / "student.pt", "state_dict"))
    last = ckpt.load_checkpoint(full / "checkpoints" / "epoch_2.pt")["modules"]
    resumed = ckpt.load_checkpoint(killed / "checkpoints" / "epoch_2.pt")["modules"]
    for name in ("head", "eapn"):
        assert_same_state(last[name], resumed[name])


def test_warmup_freeze_schedule_and_rerun(train_data, tiny_configs, reference_warmup: ReferenceWarmup,
                                          tmp_path: Path) -> None:
    exp = tmp_path / "warmup"
    shutil.copytree(reference_warmup.exp, exp)              # the reruns below must not touch the shared run
    from nawsv.models.config import SSLConfig
    from nawsv.models.ssl import build_student
    from nawsv.utils.config import load_config
    from nawsv.train.warmup import WarmupConfig

    cfg = load_config(WarmupConfig, tiny_configs["warmup"])
    initial = build_student(cfg.ssl).state_dict()
    epoch1 = ckpt.load_checkpoint(exp / "checkpoints" / "epoch_1.pt")["modules"]["student"]
    epoch2 = ckpt.load_checkpoint(exp / "checkpoints" / "epoch_2.pt")["modules"]["student"]
    backbone = [k for k in initial if k.startswith("backbone.")]
    adapters = [k for k in initial if k.startswith("adapters.")]
    assert backbone and adapters
    for key in backbone:                         # epoch 1: adapters only, the SSL model stays bit-identical
        assert torch.equal(initial[key], epoch1[key]), key
    assert all(not torch.equal(initial[k], epoch1[k]) for k in adapters if k.endswith("weight"))
    changed = [k for k in backbone if not torch.equal(epoch1[k], epoch2[k])]
    assert len(changed) > len(backbone) // 2     # epoch 2: the whole student trains
    log = (exp / "train.log").read_text()
    assert "optimiser re-created" in log and (exp / "tensorboard").is_dir()
    assert "diagnostics: 2 utterances of training speakers held out" in log
    assert "diagnostics before warm-up: hint" in log and "diagnostics after epoch 2: hint" in log
    from nawsv.formats.diagnostics_record import read_diagnostics
    rows = read_diagnostics(exp / "diagnostics.tsv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and all(r["hint"] > 0 for r in rows)
    assert isinstance(SSLConfig, type)
    argv = reference_warmup_argv(train_data, tiny_configs["warmup"], exp)
    again = run_module("nawsv.bin.train", *argv, check=True)
    assert "stage already finished" in again.stderr
    changed_cfg = run_module("nawsv.bin.train", *argv, "--override", "optim.lr=0.5")
    assert changed_cfg.returncode == 2 and "optim.lr: 0.001 -> 0.5" in changed_cfg.stderr
    assert load_config(WarmupConfig, exp / "config.yaml").optim.lr == 1e-3      # the saved config is intact


def test_finetune_freeze_margin_and_average(train_data, tiny_configs, reference_warmup: ReferenceWarmup,
                                            tmp_path: Path) -> None:
    warm = reference_warmup.exp
    exp = tmp_path / "finetune"
    run_module("nawsv.bin.train", *finetune_args(train_data, tiny_configs["finetune"], exp,
                                                 str(warm / "student.pt")), check=True)
    student = tensors(warm / "student.pt", "state_dict")
    states = [ckpt.load_checkpoint(exp / "checkpoints" / f"epoch_{e}.pt")["modules"] for e in (1, 2, 3)]
    for key, value in student.items():                       # epoch 1: SSL frozen (adapters too)
        assert torch.equal(value, states[0]["ssl"][key]), key
    assert any(not torch.equal(states[0]["ssl"][k], states[1]["ssl"][k]) for k in student)
    margins = [s["aam"]["_extra_state"]["margin"] for s in states]
    assert margins == [0.2, 0.2, 0.4]                         # the large-margin stage really changes the margin
    from nawsv.models.speaker import load_speaker_model
    model = load_speaker_model(exp / "avg_model.pt")
    for key, value in model.backend.state_dict().items():
        if torch.is_floating_point(value):
            expected = (states[1]["backend"][key].double() + states[2]["backend"][key].double()) / 2
            torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
    log = (exp / "train.log").read_text()
    assert "crop_seconds 0.8" in log and "SSL model is trainable" in log


def test_baseline_without_warmup(train_data, tiny_configs, tmp_path: Path) -> None:
    exp = tmp_path / "baseline"
    run_module("nawsv.bin.train", *finetune_args(train_data, tiny_configs["finetune"], exp, "none",
                                                 "--override", "epochs=1", "--override", "frozen_ssl_epochs=1",
                                                 "--override", "large_margin_epochs=0",
                                                 "--override", "average_last=1", "--dev_data",
                                                 str(train_data["test"])), check=True)
    dev_line = next(line for line in (exp / "train.log").read_text().splitlines() if "dev (test/O)" in line)
    eer = float(dev_line.split("dev_eer ")[1].split(",")[0])
    assert 0.0 <= eer <= 100.0                                       # the held-out trials were scored
    state = tensors(exp / "avg_model.pt", "ssl")["state_dict"]
    ups = [v for k, v in state.items() if k.startswith("adapters.") and "up" in k]
    assert ups and all(torch.count_nonzero(v) == 0 for v in ups)   # zero adapters: the plain pre-trained model


def test_torchrun_two_processes_use_the_global_batch(train_data, tiny_configs, tmp_path: Path) -> None:
    exp = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "nawsv.bin.train", *warmup_args(train_data, tiny_configs["warmup"], exp, "--override", "epochs=1",
                                           "--dev_data", str(train_data["test"]))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (exp / "student.pt").exists()
    log = (exp / "train.log").read_text()
    assert "eapn_candidates 4.0000" in log               # each rank holds 2 pairs, E-APN scores against all 4
    assert "dev (test/O): dev_eer" in log                # rank 0 evaluates while rank 1 waits at the barrier


def test_half_cosine_matches_the_spec_table() -> None:
    expected = {0: 5.0e-5, 5: 4.6e-5, 10: 3.5e-5, 15: 2.1e-5, 19: 1.05e-5, 20: 8.3e-6, 23: 3.1e-6, 25: 1.2e-6,
                26: 6.7e-7}
    for epoch, value in expected.items():
        assert learning_rate(epoch, 27, 5e-5, 5e-7, "half_cosine") == pytest.approx(value, rel=0.05)
    assert learning_rate(33, 50, 5e-5, 5e-5, "constant") == 5e-5


def launch_ranks(args: list[str], tmp_path: Path, world: int = 2, timeout: float = 300) -> list[tuple[int, str, float]]:
    """``python -m nawsv.bin.train args`` as ``world`` ranks started the way srun starts them (RANK, WORLD_SIZE,
    MASTER_ADDR/PORT; no torchrun agent that would kill the others); (exit code, stderr, exit time) per rank."""
    from tests.gloo import free_port

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), WORLD_SIZE=str(world))
    logs = [tmp_path / f"rank{r}.err" for r in range(world)]
    procs = [subprocess.Popen([sys.executable, "-m", "nawsv.bin.train", *args], stdout=subprocess.DEVNULL,
                              stderr=logs[r].open("w"), env=dict(env, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(world)]
    ended: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(ended) < world and time.monotonic() < deadline:
        for rank, proc in enumerate(procs):
            if rank not in ended and proc.poll() is not None:
                ended[rank] = time.monotonic()
        time.sleep(0.1)
    for proc in procs:
        proc.kill()
        proc.wait()
    assert len(ended) == world, f"ranks {sorted(set(range(world)) - set(ended))} still ran after {timeout} s"
    return [(procs[r].returncode, logs[r].read_text(), ended[r]) for r in range(world)]


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("case, message", [
    ("lock", "is in use by the test"),
    ("config", "holds a different config than this run"),
    ("held_out", "held_out_0"),
])
def test_an_error_on_rank_0_alone_ends_every_rank(train_data, tiny_configs, tmp_path: Path, case: str,
                                                  message: str) -> None:
    """Two ranks started without torchrun (as srun does): rank 0 alone holds the lock, checks the saved config
    and loads the held-out audio of the diagnostics; when that fails, rank 1 ends seconds later with the same
    one-line error instead of waiting 30 minutes in its next collective."""
    import contextlib
    import json

    from nawsv.data.store import UtteranceStore
    from nawsv.train.diagnostics import hold_out
    from nawsv.train.warmup import WarmupConfig
    from nawsv.utils.config import load_config, save_config
    from nawsv.utils.lock import directory_lock

    exp, data = tmp_path / "exp", train_data["dev"]
    with contextlib.ExitStack() as stack:
        if case == "lock":
            stack.enter_context(directory_lock(exp, "the test"))
        elif case == "config":
            save_config(load_config(WarmupConfig, tiny_configs["warmup"], ["optim.lr=0.5", "optim.lr_min=0.5"]), exp)
        elif case == "held_out":                   # the audio of the held-out utterances is not audio
            data = tmp_path / "data"
            shutil.copytree(train_data["dev"], data)
            config = load_config(WarmupConfig, tiny_configs["warmup"])
            store = UtteranceStore.from_data_dir(data, "raw")
            held = {store.keys[i] for i in hold_out(store, config.diagnostics.held_out_utts, config.run.seed)[1]}
            entries = [json.loads(line) for line in (data / "raw.list").read_text().splitlines()]
            for number, entry in enumerate(e for e in entries if e["key"] in held):
                entry["wav"] = str(tmp_path / f"held_out_{number}.wav")
                Path(entry["wav"]).write_bytes(b"not audio")
            (data / "raw.list").write_text("".join(json.dumps(e) + "\n" for e in entries))
        args = warmup_args({"dev": data, "musan_train": train_data["musan_train"]}, tiny_configs["warmup"], exp,
                           "--override", "data.list_type=raw")
        (code0, err0, end0), (code1, err1, end1) = launch_ranks(args, tmp_path)
    assert code0 != 0 and code1 != 0
    assert message in error_line(err0) and error_line(err1) == error_line(err0)
    assert end1 - end0 < 20, f"rank 1 ended {end1 - end0:.0f} s after rank 0"
