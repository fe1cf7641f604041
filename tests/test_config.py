"""Typed configs: unknown keys, type errors, overrides and the experiment-config guard."""
import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from nawsv.utils.config import dump_config, load_config, save_config
from nawsv.utils.errors import ConfigError, ExperimentError


@dataclasses.dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclasses.dataclass
class Demo:
    name: str = "x"
    epochs: int = 3
    mode: Literal["a", "b"] = "a"
    layers: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    optim: Optim = dataclasses.field(default_factory=Optim)
    dev_trials: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_load_with_nested_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "epochs: 5\noptim:\n  lr: 1\n")
    cfg = load_config(Demo, path, ["optim.betas=[0.5, 0.6]", "mode=b", "dev_trials=null"])
    assert cfg == Demo(epochs=5, mode="b", optim=Optim(lr=1.0, betas=(0.5, 0.6)))
    assert isinstance(cfg.optim.lr, float)


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "epoch: 5\n")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) 'epoch' in .*c.yaml; valid keys: dev_trials, "
                                          r"epochs, layers, mode, name, optim"):
        load_config(Demo, path)


def test_unknown_nested_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'momentum' in section 'optim' of .*; valid keys: betas, lr"):
        load_config(Demo, write(tmp_path, "optim:\n  momentum: 0.9\n"))


@pytest.mark.parametrize("text, message", [
    ("epochs: three\n", r"config key 'epochs' .*expected int, got 'three'"),
    ("epochs: true\n", r"config key 'epochs' .*expected int"),
    ("mode: c\n", r"'c' is not one of \['a', 'b'\]"),
    ("epochs: 0\n", r"epochs must be >= 1, got 0"),
    ("optim:\n  betas: [1]\n", r"optim.betas"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("epochs: [1\n", r"not valid YAML \(line \d+, column \d+: expected .*\)$"),
])
def test_invalid_values(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Demo, write(tmp_path, text))


def test_bad_override() -> None:
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(Demo, None, ["epochs"])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Demo, tmp_path / "nope.yaml")


def test_dump_round_trip(tmp_path: Path) -> None:
    cfg = Demo(epochs=7, optim=Optim(lr=0.5))
    assert load_config(Demo, write(tmp_path, dump_config(cfg))) == cfg


def test_save_config_refuses_a_changed_experiment(tmp_path: Path) -> None:
    save_config(Demo(), tmp_path)
    save_config(Demo(), tmp_path)                      # same config: fine (resume)
    with pytest.raises(ExperimentError, match=r"epochs: 3 -> 4"):
        save_config(Demo(epochs=4), tmp_path)
    assert load_config(Demo, tmp_path / "config.yaml").epochs == 3   # the old copy is untouched
    save_config(Demo(epochs=4), tmp_path, allow_change=True)
    assert load_config(Demo, tmp_path / "config.yaml").epochs == 4


def _tight_optim() -> Optim:
    return Optim(lr=0.5, betas=(0.1, 0.2))


@dataclasses.dataclass
class Parent:
    optim: Optim = dataclasses.field(default_factory=_tight_optim)


def test_partial_section_keeps_the_parents_defaults(tmp_path: Path) -> None:
    """A partial nested section is completed from the enclosing config's default, not the bare dataclass."""
    cfg = load_config(Parent, write(tmp_path, "optim:\n  lr: 0.25\n"))
    assert cfg.optim == Optim(lr=0.25, betas=(0.1, 0.2))
    assert load_config(Parent, None) == Parent()
