"""E-APN across 2 gloo processes equals one process on the concatenated batch (loss and gradients).

The workers average parameter gradients over ranks with all_reduce / world_size, exactly what DDP does,
and report the mean of the per-rank losses (the documented convention of nawsv.losses.eapn).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nawsv.losses.eapn import EAPNLoss
from nawsv.utils.distributed import all_gather_with_grad, rank, world_size
from tests.gloo import free_port

WORLD = 2
SPLITS = ([4, 4], [3, 5])          # rows per rank: equal, and unequal (a short last batch)


class _Embedder(nn.Module):
    """Shared encoder + E-APN, so gradients reach the encoder through queries and all anchor sets."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 5)
        self.eapn = EAPNLoss(init_w=7.0, init_b=-2.0)

    def forward(self, query: torch.Tensor, anchors: list[torch.Tensor]) -> torch.Tensor:
        return self.eapn(self.encoder(query), [self.encoder(a) for a in anchors])


def _inputs(total: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(total)
    return torch.randn(total, 6, generator=g), [torch.randn(total, 6, generator=g) for _ in range(3)]


def _loss_and_grads(model: nn.Module, query: torch.Tensor, anchors: list[torch.Tensor]):
    model.zero_grad()
    loss = model(query, anchors)
    loss.backward()
    return loss.detach(), {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _worker(local_rank: int, port: int, state: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=local_rank, world_size=WORLD)
    try:
        results = {"rank": rank(), "world": world_size()}
        gathered, offset = all_gather_with_grad(torch.full((local_rank + 1, 2), float(local_rank)))
        results["gather"] = (gathered, offset)
        model = _Embedder()
        model.load_state_dict(state)
        for split in SPLITS:
            query, anchors = _inputs(sum(split))
            start, stop = sum(split[:local_rank]), sum(split[: local_rank + 1])
            loss, grads = _loss_and_grads(model, query[start:stop], [a[start:stop] for a in anchors])
            dist.all_reduce(loss)
            for grad in grads.values():          # DDP: average the gradients over ranks
                dist.all_reduce(grad)
                grad /= WORLD
            results[tuple(split)] = (loss / WORLD, grads)
        if local_rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_ranks_equal_one_process_on_the_concatenated_batch(tmp_path: Path):
    torch.manual_seed(0)
    model = _Embedder()
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(free_port(), model.state_dict(), str(out)), nprocs=WORLD, join=True)
    results = torch.load(out, weights_only=False)
    assert (results["rank"], results["world"]) == (0, WORLD)
    gathered, offset = results["gather"]
    torch.testing.assert_close(gathered, torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
    assert offset == 0
    for split in SPLITS:
        query, anchors = _inputs(sum(split))
        loss, grads = _loss_and_grads(model, query, anchors)
        dist_loss, dist_grads = results[tuple(split)]
        torch.testing.assert_close(dist_loss, loss, atol=1e-6, rtol=1e-5)
        assert set(dist_grads) == set(grads) == {"encoder.weight", "encoder.bias", "eapn.w", "eapn.b"}
        for name, grad in grads.items():
            assert grad.abs().max() > 0, name
            torch.testing.assert_close(dist_grads[name], grad, atol=1e-6, rtol=1e-5, msg=f"{split} {name}")
