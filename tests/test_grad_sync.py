"""Overlapped gradient averaging and LayerDrop across ranks (issue 21, items 1-2), in 2 gloo processes.

- the averaged gradients equal the mean of hand-computed per-rank gradients; a parameter used on one rank only
  gets half its gradient, one used on no rank keeps ``grad = None``; a NaN loss on one rank is known on both;
  all buckets but the last start their all-reduce while backward still runs;
- a layer LayerDrop skips on every rank keeps its weights and Adam moments, while the others move;
- the trainer with LayerDrop 0.5 on 2 ranks ends with the weights of one process on the whole batch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from nawsv.train.distributed import DistContext
from nawsv.train.grad_sync import GradientSync
from nawsv.train.loop import OptimConfig, RunConfig, Trainer
from tests.gloo import run_gloo

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


class _Chain(nn.Module):
    """Four 16x16 linears (1 KiB each) in a chain, plus one parameter only rank 0 uses and one nobody uses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(16, 16, bias=False) for _ in range(4))
        self.rank0_only = nn.Parameter(torch.ones(16))
        self.unused = nn.Parameter(torch.ones(16))

    def forward(self, x: torch.Tensor, rank: int) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        if rank == 0:
            x = x * self.rank0_only
        return x.square().mean()


def _inputs(rank: int) -> torch.Tensor:
    return torch.randn(3, 16, generator=torch.Generator().manual_seed(10 + rank))


def _local_grads(rank: int) -> dict[str, torch.Tensor]:
    model = _Chain()
    model(_inputs(rank), rank).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _sync_worker(rank: int, out: str) -> None:
    model = _Chain()
    sync = GradientSync(list(model.parameters()), 2, bucket_bytes=(1024, 1024))   # one bucket per linear
    result = sync.backward(model(_inputs(rank), rank))
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss = model(_inputs(rank), rank)
    poisoned = sync.backward(loss * float("nan") if rank == 1 else loss)
    early, buckets = sync.early_buckets, sync.num_buckets
    torch.save({"grads": grads, "result": result, "early": early, "buckets": buckets,
                "poisoned": poisoned}, f"{out}.{rank}")


def test_averaged_gradients_unused_parameters_and_loss_verdicts(tmp_path: Path) -> None:
    run_gloo(_sync_worker, 2, str(tmp_path / "sync"))
    ranks = [torch.load(tmp_path / f"sync.{r}", weights_only=False) for r in range(2)]
    local = [_local_grads(r) for r in range(2)]
    for got in ranks:
        for name in [f"layers.{i}.weight" for i in range(4)]:
            torch.testing.assert_close(got["grads"][name], (local[0][name] + local[1][name]) / 2, atol=1e-7,
                                       rtol=1e-6)
        torch.testing.assert_close(got["grads"]["rank0_only"], local[0]["rank0_only"] / 2)
        assert got["grads"]["unused"] is None
        assert got["result"].losses_finite and not got["poisoned"].losses_finite
        # Buckets in rank 0's arrival order after step 1: [rank0_only] [3] [2] [1] [0] [unused]; all but the
        # last gradient's bucket (and the one no rank fills) start while backward still runs.
        assert got["buckets"] == 6 and got["early"] == 4
    expected_norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in ranks[0]["grads"].values()
                                                        if g is not None]))
    assert ranks[0]["result"].norm == ranks[1]["result"].norm == pytest.approx(float(expected_norm), rel=1e-6)


def _tiny_student(layerdrop: float) -> nn.Module:
    from nawsv.models.config import SSLConfig
    from nawsv.models.ssl import build_student

    student = build_student(SSLConfig(preset="tiny", adapter_dim=8, layerdrop=layerdrop))
    for module in student.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    return student.train()


def _seed_dropping(student: nn.Module, first: list[int], then: list[int]) -> int:
    """A seed whose first draw drops the layers ``first`` and whose second draw drops ``then``."""
    for seed in range(1000):
        generator = torch.Generator().manual_seed(seed)
        if student.dropped_layers(generator) == first and student.dropped_layers(generator) == then:
            return seed
    raise AssertionError("no such seed")


def _dropped_worker(rank: int, out: str) -> None:
    student = _tiny_student(0.5)
    seed = _seed_dropping(student, [], [2])
    shared = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    sync = GradientSync(list(student.parameters()), 2)
    snapshots = []
    for _ in range(2):
        wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(rank))
        sync.backward(student(wav, layerdrop_generator=shared)[:, -1].square().mean())
        none = {n for n, p in student.named_parameters() if p.grad is None}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state = {n: optimizer.state[p] for n, p in student.named_parameters()}
        snapshots.append((none, {n: p.detach().clone() for n, p in student.named_parameters()},
                          {n: {k: v.clone() for k, v in s.items()} for n, s in state.items()}))
    torch.save(snapshots, f"{out}.{rank}")


def test_a_layer_dropped_on_every_rank_keeps_its_weights_and_adam_moments(tmp_path: Path) -> None:
    run_gloo(_dropped_worker, 2, str(tmp_path / "drop"))
    for rank in range(2):
        (none_before, weights_before, adam_before), (none, weights, adam) = torch.load(tmp_path / f"drop.{rank}",
                                                                                     weights_only=False)
        layer2 = {n for n in weights if n.startswith(("backbone.encoder.layers.2.", "adapters.2."))}
        assert layer2 and layer2 <= none and not (layer2 & none_before)     # step 1 used it, step 2 dropped it
        for name in layer2:
            assert torch.equal(weights[name], weights_before[name]), name
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(adam[name][key], adam_before[name][key]), (name, key)
        moved = [n for n in weights if n.startswith("backbone.encoder.layers.3.")]
        assert moved and all(not torch.equal(weights[n], weights_before[n]) for n in moved)


class _LayerDropTask:
    """The tiny student under LayerDrop 0.5 and a per-utterance loss: the global batch split over ranks.

    In float64: Adam moves a weight by up to lr whatever its gradient's size, so a gradient that is zero but for
    rounding (attention's key biases: softmax ignores a shift shared by all keys) differs by ~1e-5 between 1 and
    2 processes in float32 after a few steps at lr 1e-3; in float64 the runs agree to ~1e-13.
    """

    name = "layerdrop"
    STEPS = 4

    def __init__(self, rank: int, world: int) -> None:
        self.student = _tiny_student(0.5).double()
        torch.manual_seed(0)
        self.head = nn.Linear(128, 4).double()
        self.rank, self.world = rank, world
        self.dropped: list[list[int]] = []

    def modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "head": self.head}

    def configure_epoch(self, epoch: int) -> bool:
        return False

    def steps_in_epoch(self, epoch: int) -> int:
        return self.STEPS

    def batches(self, epoch: int, start_step: int):
        for step in range(start_step, self.STEPS):
            wav = torch.randn(4, 6400, generator=torch.Generator().manual_seed(100 * epoch + step)).double()
            share = 4 // self.world
            yield wav[self.rank * share:(self.rank + 1) * share]

    def training_step(self, wav: torch.Tensor, generator: torch.Generator, shared: torch.Generator):
        self.dropped.append(self.student.dropped_layers(torch.Generator().set_state(shared.get_state())))
        states = self.student(wav, layerdrop_generator=shared)
        return self.head(states.mean(dim=(1, 2))).square().sum(dim=1).mean(), {}

    def samples_per_step(self) -> int:
        return 4

    def epoch_scalars(self, epoch: int) -> dict[str, float]:
        return {}

    def finish(self, out_dir: Path, epochs: int) -> None:
        pass


def _train(rank: int, world: int, out_dir: Path) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    task = _LayerDropTask(rank, world)
    trainer = Trainer(task, 1, OptimConfig(lr=1e-3, lr_min=1e-3), RunConfig(log_every_steps=1), out_dir,
                      DistContext(rank, world))
    trainer.fit(resume="never")
    weights = {f"{m}.{n}": p.detach().clone() for m, module in task.modules().items()
               for n, p in module.named_parameters()}
    return weights, task.dropped


def _trainer_worker(rank: int, out: str) -> None:
    result: Any = _train(rank, 2, Path(f"{out}_rank{rank}"))
    torch.save(result, f"{out}.{rank}")


def test_two_ranks_with_layerdrop_train_like_one_process(tmp_path: Path) -> None:
    single, dropped = _train(0, 1, tmp_path / "single")
    assert any(dropped) and len(set(map(tuple, dropped))) > 1              # LayerDrop did act, not alike each step
    run_gloo(_trainer_worker, 2, str(tmp_path / "two"))
    for rank in range(2):
        weights, rank_dropped = torch.load(tmp_path / f"two.{rank}", weights_only=False)
        assert rank_dropped == dropped                        # the same layers on every rank, as one process
        for name, value in single.items():
            torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=0, msg=name)
    initial = _LayerDropTask(0, 1).modules()
    start = {f"{m}.{n}": p for m, module in initial.items() for n, p in module.named_parameters()}
    assert sum(not torch.equal(single[n], start[n]) for n in single) > 10      # the run did train
