"""Class-weighted AAM across 2 and 3 gloo ranks equals one process on the concatenated batch (issue 17, finding 1).

Each worker averages gradients over ranks with the trainer's own :class:`GradientSync` and reports the mean of
the per-rank losses. The batch has an uneven class mix with inverse-frequency weights spanning 40x, split evenly
and unevenly over the ranks.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from nawsv.losses.aam import AAMSoftmax, inverse_frequency_weights
from nawsv.train.grad_sync import GradientSync
from tests.gloo import run_gloo

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

CLASS_COUNTS = [1, 2, 4, 10, 40]
LABELS = torch.tensor([0, 3, 4, 4, 1, 4, 2, 4, 4, 0, 3, 4])          # 12 crops, an uneven class mix
SPLITS = {2: ([6, 6], [3, 9]), 3: ([4, 4, 4], [1, 5, 6])}


class _Head(nn.Module):
    def __init__(self, weight_norm: str) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 8)
        self.aam = AAMSoftmax(8, len(CLASS_COUNTS), class_weights=inverse_frequency_weights(CLASS_COUNTS),
                              weight_norm=weight_norm)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.aam(self.encoder(x), labels)[0]


def _inputs() -> torch.Tensor:
    return torch.randn(len(LABELS), 6, generator=torch.Generator().manual_seed(4))


def _step(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
          sync: GradientSync | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(x, labels)
    loss.backward() if sync is None else sync.backward(loss)
    return loss.detach(), {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, weight_norm: str, state: dict, out: str) -> None:
    model = _Head(weight_norm)
    model.load_state_dict(state)
    sync = GradientSync(list(model.parameters()), world)
    results = {}
    for split in SPLITS[world]:
        start, stop = sum(split[:rank]), sum(split[: rank + 1])
        loss, grads = _step(model, _inputs()[start:stop], LABELS[start:stop], sync)
        dist.all_reduce(loss)
        results[tuple(split)] = (loss / world, grads)
    if rank == 0:
        torch.save(results, out)


def _distributed(world: int, weight_norm: str, model: nn.Module, tmp_path: Path) -> dict:
    out = tmp_path / f"{world}_{weight_norm}.pt"
    run_gloo(_worker, world, world, weight_norm, model.state_dict(), str(out))
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("world", [2, 3])
def test_global_class_weight_normalisation_equals_one_process(world: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Head("global")
    single_loss, single_grads = _step(model, _inputs(), LABELS)
    reference = torch.nn.functional.cross_entropy(model.aam.logits(model.encoder(_inputs()), LABELS), LABELS,
                                                  weight=model.aam.class_weights)
    torch.testing.assert_close(single_loss, reference.detach(), atol=0, rtol=1e-6)   # PyTorch's weighted mean
    for split, (loss, grads) in _distributed(world, "global", model, tmp_path).items():
        torch.testing.assert_close(loss, single_loss, atol=0, rtol=1e-6, msg=str(split))
        for name, grad in single_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-5, msg=f"{split} {name}")


def test_per_rank_normalisation_depends_on_the_split(tmp_path: Path) -> None:
    """The released behaviour, kept as a switch: the update changes with the GPU count (so the test above bites)."""
    torch.manual_seed(0)
    model = _Head("per_rank")
    _, single_grads = _step(model, _inputs(), LABELS)
    for split, (_, grads) in _distributed(2, "per_rank", model, tmp_path).items():
        worst = max(float((grads[n] - g).abs().max()) for n, g in single_grads.items())
        assert worst > 1e-2, (split, worst)


def _full_model():
    from nawsv.models.config import SSLConfig
    from nawsv.models.ecapa import EcapaTdnn
    from nawsv.models.ssl import build_student

    ssl = build_student(SSLConfig(preset="tiny", adapter_dim=4, layerdrop=0.0))
    backend = EcapaTdnn(ssl.num_hidden_states, ssl.hidden_size, channels=8, embed_dim=8)
    aam = AAMSoftmax(8, len(CLASS_COUNTS), class_weights=inverse_frequency_weights(CLASS_COUNTS))
    return nn.ModuleDict({"ssl": ssl, "backend": backend, "aam": aam})


def _full_step(model: nn.ModuleDict, wav: torch.Tensor, labels: torch.Tensor,
               sync: GradientSync | None = None) -> torch.Tensor:
    model.eval()      # dropout off and BatchNorm on running statistics: per-rank BN batches cannot match one process
    loss = model["aam"](model["backend"](model["ssl"](wav)), labels)[0]
    loss.backward() if sync is None else sync.backward(loss)
    return loss.detach()


def _wavs() -> torch.Tensor:
    return torch.randn(len(LABELS), 4000, generator=torch.Generator().manual_seed(9))


def _full_worker(rank: int, world: int, state: dict, out: str) -> None:
    model = _full_model()
    model.load_state_dict(state)
    split = SPLITS[world][1]
    start, stop = sum(split[:rank]), sum(split[: rank + 1])
    loss = _full_step(model, _wavs()[start:stop], LABELS[start:stop], GradientSync(list(model.parameters()), world))
    dist.all_reduce(loss)
    if rank == 0:
        torch.save((loss / world, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}),
                   out)


def test_full_finetune_step_over_two_ranks_equals_one_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _full_model()
    single = _full_step(model, _wavs(), LABELS)
    out = tmp_path / "full.pt"
    run_gloo(_full_worker, 2, 2, model.state_dict(), str(out))
    loss, grads = torch.load(out, weights_only=False)
    torch.testing.assert_close(loss, single, atol=0, rtol=1e-6)
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == set(expected)           # unused on every rank (the mask embedding): None, as in one process
    scale = max(float(g.abs().max()) for g in expected.values())
    for name, grad in expected.items():          # float sums in another order through ~20 layers: 1e-5 relative
        assert float((grads[name] - grad).abs().max()) <= 1e-5 * scale, name
    checked = sum(int(g.abs().max() > 1e-4 * scale) for g in expected.values())
    assert checked > 20          # gradients reach the SSL, the back-end and the class centres
