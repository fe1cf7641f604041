"""Training faults: non-finite losses, gradient spikes, checkpoints of an unknown format, a bad --resume path.

The loop is driven in-process with a tiny fake task (a linear model whose loss is made NaN, inf or huge on
chosen steps), so what the Trainer does on each step can be checked directly.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import pytest
import torch

from nawsv.bin.train import main as train_main
from nawsv.train import checkpoint as ckpt
from nawsv.train.distributed import DistContext
from nawsv.train.loop import OptimConfig, RunConfig, Trainer, TrainingError
from nawsv.utils.atomic import atomic_write_text
from nawsv.utils.errors import ExperimentError
from tests.faults.conftest import assert_user_error, cli, snapshot

STEPS = 5


class FakeTask:
    """A linear model on fixed inputs; the loss of the steps in ``nan``/``inf``/``spike`` is spoiled."""

    name = "fake"

    def __init__(self, nan=(), inf=(), spike=()) -> None:
        generator = torch.Generator().manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        with torch.no_grad():
            for param in self.model.parameters():
                param.copy_(torch.randn(param.shape, generator=generator))
        self.nan, self.inf, self.spike = set(nan), set(inf), set(spike)
        self.seen: list[tuple[int, int, list[torch.Tensor]]] = []      # parameters at the start of each step

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def configure_epoch(self, epoch: int) -> bool:
        return False

    def steps_in_epoch(self, epoch: int) -> int:
        return STEPS

    def batches(self, epoch: int, start_step: int):
        return [(epoch, step) for step in range(start_step, STEPS)]

    def training_step(self, batch, generator: torch.Generator, shared: torch.Generator):
        epoch, step = batch
        self.seen.append((epoch, step, [p.detach().clone() for p in self.model.parameters()]))
        x = torch.linspace(-1, 1, 8).reshape(2, 4) * (step + 1)
        loss = (self.model(x) - 1).pow(2).mean()
        if (epoch, step) in self.nan:
            loss = loss * float("nan")
        if (epoch, step) in self.inf:
            loss = loss + float("inf")
        if (epoch, step) in self.spike:
            loss = loss * 1e6
        return loss, {}

    def samples_per_step(self) -> int:
        return 2

    def epoch_scalars(self, epoch: int) -> dict[str, float]:
        return {}

    def finish(self, out_dir: Path, epochs: int) -> None:
        atomic_write_text(out_dir / "final.txt", "done\n")


def fit(task: FakeTask, out: Path, epochs: int = 2, **run) -> Trainer:
    trainer = Trainer(task, epochs, OptimConfig(lr=0.05, lr_min=0.05), RunConfig(seed=1, log_every_steps=1, **run),
                      out, DistContext())
    trainer.fit("auto")
    return trainer


def params_after(task: FakeTask, epoch: int, step: int) -> list[torch.Tensor]:
    """The parameters once step (epoch, step) is done: those the next step started from."""
    index = next(i for i, (e, s, _) in enumerate(task.seen) if (e, s) == (epoch, step))
    return task.seen[index + 1][2]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_non_finite_steps_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    task = FakeTask(nan={(0, 1)}, inf={(0, 3)})
    with caplog.at_level(logging.INFO, logger="nawsv"):
        trainer = fit(task, tmp_path)
    before = {(e, s): p for e, s, p in task.seen}
    for bad in ((0, 1), (0, 3)):                 # a skipped step leaves every parameter bit-identical
        assert same(params_after(task, *bad), before[bad])
    for good in ((0, 0), (0, 2), (1, 0)):        # an ordinary step changes them
        assert not same(params_after(task, *good), before[good])
    assert trainer.nonfinite_total == 2 and trainer.nonfinite_in_row == 0
    text = caplog.text
    assert "non-finite loss at epoch 1 step 1: step skipped (1 in a row, 1 in total)" in text
    assert "non-finite loss at epoch 1 step 3: step skipped (1 in a row, 2 in total)" in text
    assert "2 non-finite step(s) skipped so far" in text
    counters = ckpt.load_checkpoint(tmp_path / "checkpoints" / "epoch_2.pt")["counters"]
    assert counters["nonfinite_total"] == 2 and (tmp_path / "final.txt").is_file()


def test_too_many_in_a_row_stop_the_run_and_keep_the_checkpoints(tmp_path: Path) -> None:
    task = FakeTask(nan={(1, 0), (1, 1), (1, 2)})
    with pytest.raises(TrainingError) as info:
        fit(task, tmp_path, epochs=3, max_nonfinite_in_row=3)
    # the run stopped right after the third skipped step; epoch 1's checkpoint is all there is
    assert [(e, s) for e, s, _ in task.seen][-1] == (1, 2)
    message = str(info.value)
    assert "3 non-finite steps in a row (epoch 2, step 2)" in message and str(tmp_path / "checkpoints") in message
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["epoch_1.pt"]
    assert ckpt.verify_checkpoint(tmp_path / "checkpoints" / "epoch_1.pt") is None
    assert not (tmp_path / "final.txt").exists()
    first = snapshot(tmp_path / "checkpoints")
    with pytest.raises(TrainingError):            # resuming meets the same losses and stops the same way
        fit(FakeTask(nan={(1, 0), (1, 1), (1, 2)}), tmp_path, epochs=3, max_nonfinite_in_row=3)
    assert snapshot(tmp_path / "checkpoints") == first
    fit(FakeTask(nan={(1, 0), (1, 1)}), tmp_path, epochs=3, max_nonfinite_in_row=3)    # two in a row are tolerated
    assert (tmp_path / "final.txt").is_file()


def test_gradient_norm_spike_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nawsv"):
        fit(FakeTask(spike={(0, 3)}), tmp_path, epochs=1)
    spikes = [r.getMessage() for r in caplog.records if "gradient norm spike" in r.getMessage()]
    assert len(spikes) == 1 and spikes[0].startswith("gradient norm spike at epoch 1 step 3")


def write_future_checkpoint(path: Path, version: int) -> None:
    buffer = io.BytesIO()
    torch.save({"format_version": version, "task": "warmup"}, buffer)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.with_suffix(".json").write_text(json.dumps({"format_version": version, "bytes": len(data),
                                                     "sha256": hashlib.sha256(data).hexdigest()}))


def test_checkpoint_of_a_newer_format_is_refused_not_skipped(tmp_path: Path) -> None:
    ckpt.save_checkpoint(tmp_path / "epoch_1.pt", {"x": 1})
    write_future_checkpoint(tmp_path / "epoch_2.pt", ckpt.FORMAT_VERSION + 1)
    with pytest.raises(ExperimentError, match=r"epoch_2\.pt has format version 2, written by a newer nawsv"):
        ckpt.latest_good_checkpoint(tmp_path)     # falling back to epoch_1 would later overwrite epoch_2.pt
    with pytest.raises(ExperimentError, match="newer nawsv"):
        ckpt.load_checkpoint(tmp_path / "epoch_2.pt")


def test_newer_checkpoint_and_bad_resume_path_through_the_cli(train_data: dict, tiny_configs: dict, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    exp = tmp_path / "exp"
    future = exp / "checkpoints" / "epoch_1.pt"
    write_future_checkpoint(future, 7)
    before = snapshot(exp / "checkpoints")
    def argv(exp_dir: Path, *extra: object) -> list:
        return ["warmup", "--config", tiny_configs["warmup"], "--train_data", train_data["dev"], "--musan",
                train_data["musan_train"], "--exp_dir", exp_dir, "--device", "cpu", *extra]

    assert_user_error(cli(train_main, argv(exp), capsys), str(future), "format version 7", "newer nawsv")
    assert snapshot(exp / "checkpoints") == before
    truncated = tmp_path / "elsewhere" / "epoch_3.pt"
    ckpt.save_checkpoint(truncated, {"task": "warmup"})
    truncated.write_bytes(truncated.read_bytes()[:40])
    assert_user_error(cli(train_main, argv(tmp_path / "exp2", "--resume", truncated), capsys), str(truncated),
                      "truncated")
