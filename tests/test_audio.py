"""Audio reading: every bad file gives an error naming key and path; rates and channels are handled."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nawsv.data.audio import audio_info, decode_audio, load_audio, write_audio
from nawsv.utils.errors import AudioError


def tone(n: int = 16000, rate: int = 16000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)


def test_read_segment_and_whole(tmp_path: Path) -> None:
    x = tone()
    write_audio(tmp_path / "a.wav", x, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav"), x)
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav", start=100, num_samples=50), x[100:150])
    assert audio_info(tmp_path / "a.wav").duration == 1.0


def test_segments_equal_slices_of_the_whole_read(tmp_path: Path) -> None:
    """Windows at the start, middle and past the end, for native, resampled and stereo files."""
    x = tone()
    write_audio(tmp_path / "a.wav", x, subtype="FLOAT")
    sf.write(tmp_path / "r.wav", tone(8000, 8000), 8000, subtype="FLOAT")
    sf.write(tmp_path / "s.wav", np.stack([x, -0.5 * x], axis=1), 16000, subtype="FLOAT")
    for name in ["a.wav", "r.wav", "s.wav"]:
        whole = load_audio(tmp_path / name)
        for start, count in [(0, 10), (15990, 10), (15995, 50), (7000, 1000)]:
            np.testing.assert_array_equal(load_audio(tmp_path / name, start=start, num_samples=count),
                                          whole[start:start + count], err_msg=f"{name} [{start}, +{count})")


def test_missing_file_names_key(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"utterance 'spk/v/1.wav' \(.*nope.wav\): file does not exist"):
        load_audio(tmp_path / "nope.wav", key="spk/v/1.wav")


def test_corrupt_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioError, match="bad.wav.*cannot read audio header"):
        load_audio(path, key="k")


def test_zero_length_file(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty.wav.*cannot read audio header"):
        load_audio(tmp_path / "empty.wav")
    sf.write(tmp_path / "nosamples.wav", np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="holds no samples"):
        load_audio(tmp_path / "nosamples.wav")


def test_non_finite_samples(tmp_path: Path) -> None:
    x = tone()
    x[10] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(tmp_path / "nan.wav")


def test_wrong_rate_resampled_or_refused(tmp_path: Path) -> None:
    x = tone(8000, rate=8000)
    sf.write(tmp_path / "8k.wav", x, 8000, subtype="FLOAT")
    y = load_audio(tmp_path / "8k.wav")
    assert y.shape == (16000,)
    # a 440 Hz tone stays a 440 Hz tone after resampling
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) - 440) <= 1          # 1-s signal: 1 Hz bins
    with pytest.raises(AudioError, match="sample rate is 8000 Hz but 16000 Hz is required"):
        load_audio(tmp_path / "8k.wav", allow_resample=False)


def test_stereo_mixed_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    left, right = tone(), np.zeros(16000, dtype=np.float32)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    y = load_audio(tmp_path / "st.wav")
    np.testing.assert_allclose(y, left / 2, atol=1e-7)
    assert "2 channels; mixing down" in caplog.text


def test_too_short(tmp_path: Path) -> None:
    write_audio(tmp_path / "short.wav", tone(3200))
    with pytest.raises(AudioError, match=r"only 3200 samples \(0.200 s\)"):
        load_audio(tmp_path / "short.wav", min_samples=8000)


def test_decode_from_bytes(tmp_path: Path) -> None:
    write_audio(tmp_path / "a.flac", tone())
    y = decode_audio((tmp_path / "a.flac").read_bytes(), "k", "shard.tar")
    np.testing.assert_allclose(y, tone(), atol=1e-4)
    with pytest.raises(AudioError, match="utterance 'k' in shard.tar: cannot decode"):
        decode_audio(b"nonsense", "k", "shard.tar")
