"""Checkpoints: atomic with checksums; damaged ones are detected and the previous good one is used."""
from pathlib import Path

import pytest
import torch

from nawsv.train import checkpoint as ckpt
from nawsv.utils.errors import ExperimentError


def test_round_trip_and_order(tmp_path: Path) -> None:
    for name in ("epoch_1.pt", "step_1_5.pt", "epoch_2.pt", "step_1_10.pt", "epoch_10.pt"):
        ckpt.save_checkpoint(tmp_path / name, {"x": torch.tensor([len(name)])})
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "epoch_1.pt", "step_1_5.pt", "step_1_10.pt", "epoch_2.pt", "epoch_10.pt"]
    state = ckpt.load_checkpoint(tmp_path / "epoch_2.pt")
    assert state["format_version"] == ckpt.FORMAT_VERSION and state["x"].item() == len("epoch_2.pt")


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_sidecar"])
def test_damaged_checkpoint_falls_back(tmp_path: Path, damage: str) -> None:
    ckpt.save_checkpoint(tmp_path / "epoch_1.pt", {"x": 1})
    ckpt.save_checkpoint(tmp_path / "epoch_2.pt", {"x": 2})
    path = tmp_path / "epoch_2.pt"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        path.with_suffix(".json").unlink()
    assert ckpt.latest_good_checkpoint(tmp_path) == tmp_path / "epoch_1.pt"
    with pytest.raises(ExperimentError, match="epoch_2.pt cannot be used"):
        ckpt.load_checkpoint(path)


def test_prune_keeps_newest(tmp_path: Path) -> None:
    for name in ("epoch_1.pt", "step_1_3.pt", "epoch_2.pt", "epoch_3.pt", "step_3_2.pt"):
        ckpt.save_checkpoint(tmp_path / name, {})
    ckpt.prune_checkpoints(tmp_path, keep_epochs=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["epoch_2.pt", "epoch_3.pt", "step_3_2.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch_2.json", "epoch_2.pt", "epoch_3.json", "epoch_3.pt", "step_3_2.json", "step_3_2.pt"]


def test_average() -> None:
    states = [{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)},
              {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}]
    avg = ckpt.average_state_dicts(states)
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and avg["n"].item() == 5
