"""The trainer on a cluster (issue 17): non-finite gradients, BatchNorm statistics of skipped steps, checkpoints
that would hold NaN, rank-0 resume decisions, dev evaluation without cuDNN autotuning, precision fallback.

A toy task (Linear + BatchNorm + Linear, no randomness) keeps every run to a fraction of a second; the
distributed cases run in 2 gloo processes.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import torch.distributed as dist
from torch import nn

from nawsv.train import checkpoint as ckpt
from nawsv.formats.dev_metrics import read_dev_metrics
from nawsv.train.distributed import DistContext
from nawsv.train.loop import OptimConfig, RunConfig, Trainer, autocast_dtype
from nawsv.utils.errors import DataError, ExperimentError
from tests.gloo import run_gloo

STEPS = 4


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite backward: a finite loss whose gradients are inf."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * float("inf")


class ToyTask:
    name = "toy"

    def __init__(self, rank: int = 0, bad: set[tuple[int, int, int]] = frozenset(), data_seed: int = 0) -> None:
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        self.head = nn.Linear(3, 1)
        self.rank = rank
        self.bad = bad                     # (rank, epoch, step) whose gradients are made infinite
        self.data_seed = data_seed
        self.trainer: Trainer | None = None
        self.snapshots: dict[tuple[int, int], dict[str, Any]] = {}
        self.poison_at: tuple[int, int] | None = None
        self.benchmark_seen: list[bool] = []

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, "head": self.head}

    def configure_epoch(self, epoch: int) -> bool:
        self.net.train()
        self.head.train()
        return False

    def steps_in_epoch(self, epoch: int) -> int:
        return STEPS

    def batches(self, epoch: int, start_step: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        for step in range(start_step, STEPS):
            generator = torch.Generator().manual_seed(1000 * self.data_seed + 100 * epoch + 10 * step + self.rank)
            yield epoch, step, 3.0 + torch.randn(6, 4, generator=generator)

    def training_step(self, batch, generator: torch.Generator,
                      shared: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        epoch, step, x = batch
        self.snapshots[(epoch, step)] = _snapshot(self)
        if self.poison_at == (epoch, step):
            with torch.no_grad():
                self.head.weight.fill_(float("nan"))
        loss = self.head(self.net(x)).pow(2).mean()
        if (self.rank, epoch, step) in self.bad:
            loss = _InfGrad.apply(loss)
        return loss, {}

    def samples_per_step(self) -> int:
        return 6

    def epoch_scalars(self, epoch: int) -> dict[str, float]:
        return {}

    def finish(self, out_dir: Path, epochs: int) -> None:
        (out_dir / "final.txt").write_text("done\n")

    def dev_embed(self, wav: torch.Tensor) -> torch.Tensor:
        return wav


def _snapshot(task: ToyTask) -> dict[str, Any]:
    optimizer = task.trainer.optimizer.state_dict() if task.trainer else {}
    return {"modules": {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in task.modules().items()},
            "optimizer": {k: {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in s.items()}
                          for k, s in optimizer.get("state", {}).items()}}


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def _trainer(task: ToyTask, out_dir: Path, epochs: int = 1, rank: int = 0, world: int = 1, dev=None) -> Trainer:
    trainer = Trainer(task, epochs, OptimConfig(lr=0.05, lr_min=0.05), RunConfig(precision="fp32", log_every_steps=1),
                      out_dir, DistContext(rank, world), dev=dev)
    task.trainer = trainer
    return trainer


def test_nonfinite_gradient_step_is_skipped_and_leaves_everything_bit_identical(tmp_path: Path) -> None:
    task = ToyTask(bad={(0, 0, 2)})
    trainer = _trainer(task, tmp_path / "exp")
    trainer.fit()
    before, after = task.snapshots[(0, 2)], task.snapshots[(0, 3)]
    assert _equal(before, after)                     # weights, Adam moments and BN running stats of step 2 undone
    assert not _equal(task.snapshots[(0, 1)], before)     # the other steps do change them (the test can fail)
    assert int(before["modules"]["net"]["1.num_batches_tracked"]) == 2
    assert trainer.nonfinite_total == 1 and trainer.generator.device.type == "cpu"
    state = ckpt.load_checkpoint(tmp_path / "exp" / "checkpoints" / "epoch_1.pt")
    assert ckpt.nonfinite_tensors(state) == []


def _skip_worker(rank: int, out: str) -> None:
    task = ToyTask(rank=rank, bad={(1, 0, 2)})       # only rank 1 sees infinite gradients
    trainer = _trainer(task, Path(out) / "exp", rank=rank, world=2)
    trainer.fit()
    torch.save({"same": _equal(task.snapshots[(0, 2)], task.snapshots[(0, 3)]),
                "changed_before": not _equal(task.snapshots[(0, 1)], task.snapshots[(0, 2)]),
                "skipped": trainer.nonfinite_total,
                "weights": {n: p.detach().clone() for n, p in task.net.named_parameters()}}, f"{out}/rank{rank}.pt")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_every_rank_skips_when_one_rank_has_nonfinite_gradients(tmp_path: Path) -> None:
    run_gloo(_skip_worker, 2, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for result in ranks:
        assert result["same"] and result["changed_before"] and result["skipped"] == 1
    assert _equal(ranks[0]["weights"], ranks[1]["weights"])


def test_a_checkpoint_with_nonfinite_tensors_is_never_written(tmp_path: Path) -> None:
    good = {"modules": {"a": {"w": torch.ones(2)}}, "optimizer": {"state": {}}}
    ckpt.save_checkpoint(tmp_path / "epoch_1.pt", good)
    bad = {"modules": {"a": {"w": torch.tensor([1.0, float("nan")]), "n": torch.tensor(3)}},
           "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("inf")])}}}}
    assert ckpt.nonfinite_tensors(bad) == ["modules.a.w", "optimizer.state.0.exp_avg"]
    with pytest.raises(ExperimentError, match=r"refusing to write checkpoint .*epoch_2.pt: 2 tensor"):
        ckpt.save_checkpoint(tmp_path / "epoch_2.pt", bad)
    assert not (tmp_path / "epoch_2.pt").exists() and ckpt.latest_good_checkpoint(tmp_path).name == "epoch_1.pt"

    task = ToyTask()
    task.poison_at = (0, 3)                          # the weights turn NaN during the last step of the epoch
    with pytest.raises(ExperimentError, match="refusing to write checkpoint"):
        _trainer(task, tmp_path / "exp").fit()
    assert ckpt.list_checkpoints(tmp_path / "exp" / "checkpoints") == []


def _resume_worker(rank: int, root: str, out: str) -> None:
    trainer = _trainer(ToyTask(rank=rank), Path(root) / f"node{rank}", epochs=3, rank=rank, world=2)
    try:
        result: Any = trainer._start("auto")
        result = (result, {n: p.detach().clone() for n, p in trainer.task.net.named_parameters()})
    except ExperimentError as exc:
        result = str(exc)
    torch.save(result, f"{out}/rank{rank}.pt")


def _node_dirs(tmp_path: Path, tamper: bool) -> Path:
    """node0 holds epoch_1; node1 a copy of it plus a newer epoch_2 (or, with ``tamper``, another epoch_1)."""
    root = tmp_path / "nodes"
    _trainer(ToyTask(), root / "node0", epochs=1).fit()
    shutil.copytree(root / "node0", root / "node1")
    other = tmp_path / "other"
    _trainer(ToyTask(data_seed=7), other, epochs=2).fit()
    if tamper:
        for suffix in (".pt", ".json"):
            shutil.copy(other / "checkpoints" / f"epoch_1{suffix}", root / "node1" / "checkpoints")
    else:
        for suffix in (".pt", ".json"):
            shutil.copy(other / "checkpoints" / f"epoch_2{suffix}", root / "node1" / "checkpoints")
    return root


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ranks_resume_from_rank0s_choice_with_equal_parameters(tmp_path: Path) -> None:
    root = _node_dirs(tmp_path, tamper=False)
    assert ckpt.latest_good_checkpoint(root / "node1" / "checkpoints").name == "epoch_2.pt"   # rank 1 alone: newer
    run_gloo(_resume_worker, 2, str(root), str(tmp_path))
    (start0, weights0), (start1, weights1) = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
                                              for r in range(2))
    assert start0 == start1 == (1, 0)
    assert _equal(weights0, weights1)
    saved = ckpt.load_checkpoint(root / "node0" / "checkpoints" / "epoch_1.pt")["modules"]["net"]
    assert all(torch.equal(weights0[n], saved[n]) for n in weights0)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ranks_reading_different_checkpoint_files_stop_with_a_clear_error(tmp_path: Path) -> None:
    root = _node_dirs(tmp_path, tamper=True)
    run_gloo(_resume_worker, 2, str(root), str(tmp_path))
    for rank in range(2):
        message = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert isinstance(message, str) and "different versions of" in message and "epoch_1.pt" in message


class _Dev:
    name = "dev/toy"

    def __init__(self) -> None:
        self.benchmark: list[bool] = []

    def __call__(self, embed, device: torch.device) -> dict[str, float]:
        self.benchmark.append(torch.backends.cudnn.benchmark)
        return {"dev_eer": 10.0, "dev_mindcf_0.01": 0.5}


def test_dev_evaluation_runs_without_cudnn_autotuning(tmp_path: Path) -> None:
    dev = _Dev()
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        _trainer(ToyTask(), tmp_path / "exp", epochs=2, dev=dev).fit()
        assert dev.benchmark == [False, False] and torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = previous


def test_bf16_only_where_the_gpu_has_it(caplog: pytest.LogCaptureFixture) -> None:
    cuda = torch.device("cuda", 0)
    assert autocast_dtype("bf16", cuda, capability=(8, 0)) is torch.bfloat16
    assert autocast_dtype("bf16", cuda, capability=(9, 0)) is torch.bfloat16
    assert autocast_dtype("bf16", cuda, capability=(7, 5)) is None
    assert "compute capability 7.5" in caplog.text and "fp32" in caplog.text
    assert autocast_dtype("fp32", cuda, capability=(9, 0)) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is None


# ---------------------------------------------------------------------------------------------------------------
# Work that rank 0 does alone (issue 21): a failure there ends every rank at once with its one-line message


class _FailingDev(_Dev):
    def __call__(self, embed, device: torch.device) -> dict[str, float]:
        raise DataError("dev set data/dev: utterance 'u1' cannot be read; fix it and rerun")


def _failing_finish(out_dir: Path, epochs: int) -> None:
    raise RuntimeError("disk on fire")


CASES = {"checkpoint": ("ExperimentError", "has format version 2, written by a newer nawsv"),
         "dev": ("DataError", "dev set data/dev: utterance 'u1' cannot be read; fix it and rerun"),
         "finish": ("RuntimeError", "disk on fire")}


def _rank0_failure_worker(rank: int, out: str) -> None:
    """Each case in turn in one process group (a failure leaves the group usable: every rank took part)."""
    for case in CASES:
        task = ToyTask(rank=rank)
        if case == "finish":
            task.finish = _failing_finish
        dev = _FailingDev() if case == "dev" else None
        trainer = _trainer(task, Path(out) / case, rank=rank, world=2, dev=dev)
        start = time.monotonic()
        try:
            trainer.fit()
            result = ("none", "no error")
        except Exception as exc:  # noqa: BLE001 - the test compares what each rank raised
            result = (type(exc).__name__, str(exc))
        torch.save((*result, time.monotonic() - start), f"{out}/{case}.rank{rank}.pt")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_an_error_on_rank_0_alone_ends_every_rank_at_once(tmp_path: Path) -> None:
    """A newer-format checkpoint, a failing dev evaluation, a failing final write: rank 1 raises rank 0's
    one-line message (a bug's type and traceback stay in rank 0's log) within seconds. Collectives time out
    after 20 s, so a rank left waiting would end with a timeout, not this message."""
    exp = tmp_path / "checkpoint"
    _trainer(ToyTask(), exp).fit()
    sidecar = exp / "checkpoints" / "epoch_1.json"
    sidecar.write_text(sidecar.read_text().replace('"format_version": 1', '"format_version": 2'))
    run_gloo(_rank0_failure_worker, 2, str(tmp_path), timeout=20)
    for case, (error, message) in CASES.items():
        (type0, text0, _), (type1, text1, seconds) = (torch.load(tmp_path / f"{case}.rank{r}.pt") for r in (0, 1))
        assert type0 == error and message in text0, case
        assert type1 == "RankZeroFailed" and seconds < 20, case
        if error == "RuntimeError":
            assert text1 == (f"rank 0 failed while writing the final model: RuntimeError: {text0} (its log has "
                             f"the traceback)")
        else:
            assert text1 == text0 and "\n" not in text1, case
    assert (tmp_path / "dev" / "checkpoints" / "epoch_1.pt").is_file()        # saved before the dev evaluation


def test_a_failing_dev_evaluation_keeps_the_epoch_and_the_rerun_scores_it(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    with pytest.raises(DataError, match="cannot be read"):
        _trainer(ToyTask(), exp, epochs=2, dev=_FailingDev()).fit()
    assert [p.name for p in ckpt.list_checkpoints(exp / "checkpoints")] == ["epoch_1.pt"]     # saved before
    dev = _Dev()
    _trainer(ToyTask(), exp, epochs=2, dev=dev).fit()
    assert len(dev.benchmark) == 2                              # epoch 1 (missed) and epoch 2, nothing twice
    assert [row["epoch"] for row in read_dev_metrics(exp)] == ["1", "2"]
    assert ckpt.load_checkpoint(exp / "checkpoints" / "epoch_2.pt")["epoch"] == 2
