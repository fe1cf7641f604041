"""Python API and ``nawsv`` command: same embeddings from every model form, scores by hand, working CLI."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

from nawsv.api import Verifier
from nawsv.cli import main as cli_main
from nawsv.data.audio import load_audio, resample
from nawsv.export.package import export_model
from nawsv.models.speaker import load_speaker_model
from nawsv.utils.errors import AudioError, ExperimentError
from tests.conftest import ROOT, run_module
from tests.test_extract import forward, hand_segments, one_thread, write_data_dir, write_tiny_model  # noqa: F401

UTTS = [("s1/a", 3.4), ("s1/b", 2.2), ("s2/c", 1.6)]


@pytest.fixture(scope="module")
def exp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An experiment dir laid out as stages 4 and 8 leave it."""
    exp = tmp_path_factory.mktemp("exp")
    write_tiny_model(exp / "finetune" / "avg_model.pt")
    export_model(exp / "finetune" / "avg_model.pt", exp / "export")
    return exp


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data_dir(tmp_path_factory.mktemp("data") / "set", UTTS, seed=4)


def wav_path(data_dir: Path, key: str) -> Path:
    return data_dir / "wav" / f"{key.replace('/', '_')}.wav"


def test_every_model_form_gives_the_same_embeddings(exp_dir: Path, data_dir: Path) -> None:
    eager_model = load_speaker_model(exp_dir / "finetune" / "avg_model.pt")
    scripted = Verifier(exp_dir / "export")
    assert isinstance(scripted.embedder.model, torch.jit.ScriptModule)
    forms = [Verifier(exp_dir / "finetune" / "avg_model.pt"), Verifier(exp_dir / "finetune"), Verifier(exp_dir),
             Verifier(exp_dir / "export", engine="eager")]
    for key, _ in UTTS:
        wav = load_audio(wav_path(data_dir, key))
        direct = forward(eager_model, wav)
        np.testing.assert_allclose(scripted.embed(wav_path(data_dir, key)), direct, atol=1e-5, rtol=0)
        segments = np.stack([forward(eager_model, s) for s in hand_segments(wav, 48_000, 5)])
        np.testing.assert_allclose(scripted.embed(wav, segments=True), segments, atol=1e-5, rtol=0)
        for verifier in forms:
            np.testing.assert_array_equal(verifier.embed(wav), direct)
            np.testing.assert_allclose(verifier.embed(wav, segments=True), segments, atol=1e-5, rtol=0)
    assert scripted.embed_dim == 16 and forms[0].embed_dim == 16
    with pytest.raises(ExperimentError, match="neither"):
        Verifier(exp_dir / "nothing")
    with pytest.raises(ExperimentError, match="not an export dir"):
        Verifier(exp_dir / "finetune", engine="torchscript")


def test_scores_by_hand(exp_dir: Path, data_dir: Path) -> None:
    verifier = Verifier(exp_dir / "finetune")
    a, b = wav_path(data_dir, "s1/a"), wav_path(data_dir, "s2/c")
    assert abs(verifier.score(a, a) - 1.0) < 1e-6
    ea, eb = verifier.embed(a).astype(np.float64), verifier.embed(b).astype(np.float64)
    whole = ea @ eb / np.sqrt((ea @ ea) * (eb @ eb))
    sa, sb = verifier.embed(a, segments=True), verifier.embed(b, segments=True)
    pairs = [float(x @ y) / (np.linalg.norm(x) * np.linalg.norm(y)) for x in sa.astype(np.float64)
             for y in sb.astype(np.float64)]
    assert len(pairs) == 25
    assert verifier.score(a, b) == pytest.approx(whole, abs=1e-6)
    assert verifier.score(a, b, method="segments") == pytest.approx(np.mean(pairs), abs=1e-6)
    assert verifier.score(a, b, method="full") == pytest.approx((whole + np.mean(pairs)) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="cosine, segments, full"):
        verifier.score(a, b, method="plda")


def test_audio_inputs(exp_dir: Path, data_dir: Path) -> None:
    verifier = Verifier(exp_dir / "finetune")
    wav = load_audio(wav_path(data_dir, "s1/b"))
    reference = verifier.embed(wav)
    np.testing.assert_array_equal(verifier.embed(torch.from_numpy(wav)), reference)
    pcm = np.round(wav * 32768).clip(-32768, 32767).astype(np.int16)        # int16 is scaled like a file
    np.testing.assert_array_equal(verifier.embed(pcm), verifier.embed(pcm.astype(np.float32) / 32768))
    slow = resample(wav, 16000, 8000)
    np.testing.assert_array_equal(verifier.embed(slow, sample_rate=8000), verifier.embed(resample(slow, 8000, 16000)))
    with pytest.raises(AudioError, match="mono"):
        verifier.embed(np.stack([wav, wav]))
    with pytest.raises(AudioError, match="NaN"):
        verifier.embed(np.full(16000, np.nan, dtype=np.float32))


def test_top_level_import_stays_light() -> None:
    code = ("import sys, nawsv; assert 'torch' not in sys.modules, 'import nawsv pulled in torch'; "
            "from nawsv.api import Verifier; assert nawsv.Verifier is Verifier; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_console_command(exp_dir: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "emb" / "xvector.ark"
    run_module("nawsv.cli", "embed", str(exp_dir / "export"), str(data_dir), str(out), check=True)
    written = kaldiio.load_scp(str(tmp_path / "emb" / "xvector.scp"))
    verifier = Verifier(exp_dir / "export")
    assert list(written) == sorted(k for k, _ in UTTS)
    for key in written:              # the subprocess may use another thread count: float rounding differs
        np.testing.assert_allclose(written[key], verifier.embed(wav_path(data_dir, key)), atol=1e-5, rtol=0)

    a, b = wav_path(data_dir, "s1/a"), wav_path(data_dir, "s1/b")
    expected = verifier.score(a, b)
    proc = run_module("nawsv.cli", "verify", str(exp_dir / "export"), str(a), str(b), "--threshold",
                      str(expected - 0.01), check=True)
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert float(lines["score"].split()[0]) == pytest.approx(expected, abs=1e-5) and lines["decision"] == "accept"

    listing = tmp_path / "list.scp"                      # in-process from here on: a wav.scp-style list as input
    shutil.copy(data_dir / "wav.scp", listing)
    assert cli_main(["embed", str(exp_dir / "finetune"), str(listing), str(tmp_path / "seg.ark"),
                     "--segments", "true"]) == 0
    segments = kaldiio.load_scp(str(tmp_path / "seg.scp"))
    assert list(segments) == sorted(k for k, _ in UTTS) and all(m.shape == (5, 16) for m in segments.values())
    capsys.readouterr()
    assert cli_main(["verify", str(exp_dir / "finetune"), str(a), str(b), "--threshold", str(expected + 0.01)]) == 0
    assert "decision reject" in capsys.readouterr().out.splitlines()
    assert cli_main(["verify", str(exp_dir / "export"), str(a), str(tmp_path / "missing.wav")]) == 2
    assert "missing.wav" in capsys.readouterr().err
    for argv, text in (([], "embed"), (["verify"], "--threshold"), (["embed"], "--segments")):
        with pytest.raises(SystemExit):
            cli_main([*argv, "--help"])
        assert text in capsys.readouterr().out


def write_calibrators(path: Path, slope: float) -> None:
    """Hand-made qmf_snr calibrators of the three API methods (as the calibration step would write them)."""
    from nawsv.scoring.calibrator import Calibrator, save_calibrators

    names = ("score", "log_dur_enrol", "log_dur_test", "snr_enrol", "snr_test")
    calibrator = Calibrator(names, (slope, 0.5, -0.25, 0.01, 0.02), -3.0, 0.05, "qmf_snr")
    save_calibrators(path, {m: {"qmf_snr": calibrator} for m in ("cosine", "segment", "full", "asnorm")},
                     {"decision_variant": "qmf_snr", "p_target": 0.05})


def test_calibrated_package_gives_llrs_and_decisions(exp_dir: Path, data_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    from nawsv.api import OperatingPoint
    from nawsv.export.package import read_export_config
    from nawsv.scoring.snr import estimate_snr

    write_calibrators(tmp_path / "calibrators.json", slope=10.0)
    export = tmp_path / "export"
    export_model(exp_dir / "finetune" / "avg_model.pt", export, calibrators=tmp_path / "calibrators.json")
    a, b = wav_path(data_dir, "s1/a"), wav_path(data_dir, "s2/c")
    verifier = Verifier(export)
    result = verifier.verify(a, b)
    audio_a, audio_b = load_audio(a), load_audio(b)
    expected = (10.0 * result.score + 0.5 * np.log(audio_a.size / 16000) - 0.25 * np.log(audio_b.size / 16000)
                + 0.01 * estimate_snr(audio_a) + 0.02 * estimate_snr(audio_b) - 3.0)
    assert result.llr == pytest.approx(expected, abs=1e-9)
    assert result.operating_point == OperatingPoint(0.05, 1.0, 1.0)       # recorded at calibration
    assert result.accept == (expected >= np.log(0.95 / 0.05)) and result.calibrator == "qmf_snr"
    strict = Verifier(export, operating_point=OperatingPoint(0.001)).verify(a, b)
    assert strict.llr == pytest.approx(expected) and strict.accept == (expected >= np.log(0.999 / 0.001))
    assert cli_main(["verify", str(export), str(a), str(b), "--p_target", "0.3"]) == 0
    lines = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    assert float(lines["llr"].split()[0]) == pytest.approx(expected, abs=1e-4)
    assert lines["operating_point"].startswith("p_target=0.3 c_miss=1 c_fa=1")
    assert lines["decision"] == ("accept" if expected >= np.log(0.7 / 0.3) else "reject")
    # a new calibration rebuilds the package; no calibration: no decision, and the CLI says why
    write_calibrators(tmp_path / "calibrators.json", slope=-10.0)
    export_model(exp_dir / "finetune" / "avg_model.pt", export, calibrators=tmp_path / "calibrators.json")
    assert Verifier(export).verify(a, b).llr == pytest.approx(expected - 20.0 * result.score, abs=1e-9)
    assert read_export_config(export)["calibration_sha256"]
    uncalibrated = Verifier(exp_dir / "export").verify(a, b)
    assert uncalibrated.llr is None and uncalibrated.accept is None
    assert cli_main(["verify", str(exp_dir / "export"), str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "no calibrator" in out and "decision - (no decision without a calibrator" in out
