"""Stage 8: the traced TorchScript equals the eager model on other lengths; the package is complete and reused."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nawsv.api import Verifier
from nawsv.bin.export import main as export_main
from nawsv.export.package import export_model
from nawsv.extract.config import ExtractConfig, SegmentOptions
from nawsv.models.speaker import load_speaker_model
from nawsv.utils.cli import run_main
from nawsv.utils.errors import ConfigError
from tests.conftest import ROOT
from tests.test_extract import one_thread, write_tiny_model  # noqa: F401 (autouse fixture)

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "avg_model.pt")


@pytest.fixture(scope="module")
def export_dir(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "export"
    export_model(model_file, out, "torchscript", ExtractConfig(segments=SegmentOptions(num=4, seconds=2.5)))
    return out


def test_traced_module_equals_eager_on_two_lengths(model_file: Path, export_dir: Path) -> None:
    eager = load_speaker_model(model_file)
    traced = torch.jit.load(str(export_dir / "model.ts"))            # plain torch: no nawsv code needed
    generator = torch.Generator().manual_seed(3)
    for batch, samples in ((1, 17_600), (2, 84_960)):                 # 1.1 s and 5.31 s; traced on 3 s
        wav = 0.1 * torch.randn(batch, samples, generator=generator)
        with torch.inference_mode():
            expected, got = eager(wav), traced(wav)
        assert got.shape == (batch, 16)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_package_contents(model_file: Path, export_dir: Path) -> None:
    assert sorted(p.name for p in export_dir.iterdir()) == ["avg_model.pt", "config.yaml", "model.ts"]
    assert (export_dir / "avg_model.pt").read_bytes() == model_file.read_bytes()
    config = yaml.safe_load((export_dir / "config.yaml").read_text())
    assert config["format"] == "nawsv.export.v1"
    assert config["sample_rate"] == 16000 and config["embed_dim"] == 16
    assert config["protocol"] == {"whole": {"max_seconds": 60.0}, "segments": {"num": 4, "seconds": 2.5}}
    assert config["model"]["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert config["model"]["source"] == str(model_file.resolve())
    assert config["files"] == {"torchscript": "model.ts"}
    assert config["torchscript_device"] == "cpu"
    assert config["checks"]["torchscript"]["max_relative_diff"] <= 1e-4
    assert config["random_init_ssl"] is True and config["nawsv_version"]
    segments = Verifier(export_dir).embed(np.zeros(30_000, np.float32) + 0.01, segments=True)
    assert segments.shape == (4, 16)                                  # the recorded protocol is used


def test_rerun_is_skipped_and_a_new_model_replaces_the_package(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "avg_model.pt", seed=0)
    out = tmp_path / "export"
    export_model(model, out)
    stamp = (out / "model.ts").stat().st_mtime_ns
    export_model(model, out)
    assert (out / "model.ts").stat().st_mtime_ns == stamp                # unchanged model: nothing rewritten
    write_tiny_model(model, seed=1)
    export_model(model, out)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert (out / "avg_model.pt").read_bytes() == model.read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]   # no staging dirs left


def test_onnx_without_the_extra_is_a_clear_error(model_file: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("onnx", "onnxruntime") else real_find_spec(name, *args))
    with pytest.raises(ConfigError, match=r"pip install"):
        export_model(model_file, tmp_path / "export", "both")
    assert not (tmp_path / "export").exists()
    assert run_main(export_main, ["--model", str(model_file), "--out_dir", str(tmp_path / "x"),
                                  "--format", "onnx"]) == 2


@pytest.mark.skipif(not HAVE_ONNX, reason="ONNX export needs the [onnx] extra (onnx, onnxruntime), not installed")
def test_onnx_export_matches_eager(model_file: Path, tmp_path: Path) -> None:
    import onnxruntime

    export_model(model_file, tmp_path / "export", "both")
    session = onnxruntime.InferenceSession(str(tmp_path / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    eager = load_speaker_model(model_file)
    for samples in (20_000, 70_000):
        wav = 0.1 * torch.randn(1, samples, generator=torch.Generator().manual_seed(samples))
        (got,) = session.run(None, {"waveform": wav.numpy()})
        with torch.inference_mode():
            torch.testing.assert_close(torch.from_numpy(got), eager(wav), atol=1e-4, rtol=1e-4)


def test_command_line(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert export_main(["--model", str(model_file), "--out_dir", str(out), "--override", "segments.num=3"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["protocol"]["segments"]["num"] == 3
    assert run_main(export_main, ["--model", str(tmp_path / "missing.pt"), "--out_dir", str(out)]) == 2


def test_export_prints_only_its_own_log_lines(model_file: Path, tmp_path: Path) -> None:
    """The tracer's and exporters' expected warnings (and transformers' irrelevant ``loss_type`` warning, which
    it prints once per process, hence a fresh one) stay out of the stage's output."""
    fmt = "both" if HAVE_ONNX else "torchscript"
    proc = subprocess.run([sys.executable, "-m", "nawsv.bin.export", "--model", str(model_file),
                           "--out_dir", str(tmp_path / "export"), "--format", fmt], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    foreign = [line for line in (proc.stdout + proc.stderr).splitlines()
               if not line.startswith(("LOG (nawsv.", "WARNING (nawsv.models.ssl) "))]
    assert not foreign, "\n".join(foreign)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_torchscript_off_the_cpu_is_refused_with_one_line(export_dir: Path, device: str) -> None:
    """The trace holds CPU device constants (WavLM's relative-position arange): refuse it before any device use."""
    from nawsv.export.torchscript import load_torchscript
    from nawsv.utils.errors import ExperimentError

    with pytest.raises(ExperimentError) as info:
        load_torchscript(export_dir / "model.ts", device)
    message = str(info.value)
    assert "\n" not in message and "CPU only" in message and device in message and "engine='eager'" in message
    graph = str(torch.jit.load(str(export_dir / "model.ts")).inlined_graph)
    assert 'value="cpu"' in graph                       # why: the constant is really there
