"""Noise banks and the augmentation library: levels, windows, babble, reverberation, config, purity."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import nawsv.data.noise_bank as noise_bank_module
from nawsv.data.audio import write_audio
from nawsv.data.augment import (AugmentConfig, Augmenter, SilentAudioError, mix_at_snr, reverberate, signal_power,
                                talker_range)
from nawsv.formats.kaldi import read_table
from nawsv.data.noise_bank import NoiseBank
from nawsv.data.prepare import PrepareConfig, prepare_flat_bank, prepare_musan
from nawsv.data.synthetic import Session, Voice, synthesize_utterance
from nawsv.utils.config import load_config
from nawsv.utils.errors import ConfigError, DataError
from nawsv.utils.seeding import rng_for

EXTRA_TALKERS = 14      # the tiny corpus has 4 MUSAN speech files; babble tests need >= 6 per half


def build_banks(tiny_corpus: dict[str, Path], root: Path) -> dict[str, Path]:
    """Stage-1 banks from the tiny corpus, with extra MUSAN speech files so each half has 9 talkers."""
    musan = root / "musan"
    shutil.copytree(tiny_corpus["musan"], musan)
    for index in range(4, 4 + EXTRA_TALKERS):
        rng = rng_for("extra-talker", index)
        audio = synthesize_utterance(Voice.sample(rng), Session.sample(rng), rng.uniform(0.6, 2.5), rng)
        write_audio(musan / "speech" / "librivox" / f"speech-librivox-{index:04d}.wav", audio)
    cfg = PrepareConfig(nj=1, shards=False)
    data = root / "data"
    prepare_musan(musan, data, cfg)
    prepare_flat_bank(tiny_corpus["rirs"], data / "rirs", "rir", cfg)
    prepare_flat_bank(tiny_corpus["nonspeech"], data / "nonspeech", "nonspeech", cfg)
    return {name: data / name for name in ("musan_train", "musan_test", "rirs", "nonspeech")}


@pytest.fixture(scope="module")
def banks(tiny_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_banks(tiny_corpus, tmp_path_factory.mktemp("banks"))


def measured_snr(speech: np.ndarray, mixture: np.ndarray) -> float:
    """SNR by the documented definition, from the mixture minus the speech (independent of the code)."""
    s = speech.astype(np.float64)
    n = mixture.astype(np.float64) - s
    return 10 * np.log10(np.sum(s * s) / np.sum(n * n))


def file_window(path: str, offset: int, num: int) -> np.ndarray:
    """A noise window read independently: the whole file, cyclically repeated when short."""
    whole, _ = sf.read(path, dtype="float32")
    return np.resize(whole, num) if whole.size <= num else whole[offset:offset + num]


def speech_like(num: int, seed: int, level: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    envelope = 0.2 + np.abs(np.sin(np.arange(num) / 900.0))
    return (level * envelope * rng.standard_normal(num)).astype(np.float32)


# ---- noise bank ----------------------------------------------------------------------------------------------

def test_bank_categories_and_keys(banks: dict[str, Path]) -> None:
    bank = NoiseBank.from_dir(banks["musan_test"])
    utt2cat = read_table(banks["musan_test"] / "utt2cat")
    assert bank.categories == tuple(sorted(set(utt2cat.values()))) == ("music", "noise", "speech")
    for category in bank.categories:
        assert bank.keys(category) == tuple(sorted(k for k, c in utt2cat.items() if c == category))
    with pytest.raises(DataError, match="no files of category 'rir'"):
        bank.keys("rir")


def test_bank_windows_match_the_file(banks: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    bank = NoiseBank.from_dir(banks["musan_test"])
    paths = read_table(banks["musan_test"] / "wav.scp")
    key = bank.keys("noise")[0]
    frames = sf.info(paths[key]).frames
    calls = []
    original = noise_bank_module.load_audio

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(noise_bank_module, "load_audio", spy)
    rng = np.random.default_rng(3)
    offsets = set()
    for _ in range(20):
        window, offset = bank.read_window(key, 4000, rng)
        assert 0 <= offset <= frames - 4000
        np.testing.assert_array_equal(window, file_window(paths[key], offset, 4000))
        np.testing.assert_array_equal(bank.read_at(key, 4000, offset), window)
        offsets.add(offset)
    assert len(offsets) > 10                                      # offsets are really drawn
    assert all(c.get("num_samples") == 4000 for c in calls)       # partial reads, never the whole file
    long_window, offset = bank.read_window(key, frames + 1234, rng)
    assert offset == 0
    np.testing.assert_array_equal(long_window, file_window(paths[key], 0, frames + 1234))
    assert long_window.size == frames + 1234
    with pytest.raises(DataError, match="outside"):
        bank.read_at(key, 4000, frames)


def test_bank_errors(banks: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        NoiseBank.from_dir(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(banks["nonspeech"], broken)
    lines = (broken / "utt2cat").read_text().splitlines()
    (broken / "utt2cat").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match="no category in utt2cat"):
        NoiseBank.from_dir(broken)
    (broken / "utt2cat").unlink()
    with pytest.raises(DataError, match="utt2cat does not exist"):
        NoiseBank.from_dir(broken)


# ---- levels --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.3, 20.0])
@pytest.mark.parametrize("level", [1e-3, 0.3])
def test_mix_at_snr_is_exact(snr: float, level: float) -> None:
    speech = speech_like(16000, 1, level)                     # level 1e-3: power 1e-7, far below the old 1e-4 floor
    noise = np.random.default_rng(2).uniform(-0.5, 0.5, 16000).astype(np.float32)
    mixture, gain = mix_at_snr(speech, noise, snr)
    assert mixture.dtype == np.float32 and mixture.shape == speech.shape
    assert abs(measured_snr(speech, mixture) - snr) < 1e-3
    hand = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean((gain * noise.astype(np.float64)) ** 2))
    assert abs(hand - snr) < 1e-9


def test_silence_is_an_explicit_error() -> None:
    speech = speech_like(1000, 1)
    with pytest.raises(SilentAudioError, match="noise is digital silence"):
        mix_at_snr(speech, np.zeros(1000, np.float32), 5.0)
    with pytest.raises(SilentAudioError, match="speech is digital silence"):
        mix_at_snr(np.zeros(1000, np.float32), speech, 5.0)
    assert signal_power(np.array([3.0, -4.0])) == 12.5


# ---- reverberation -------------------------------------------------------------------------------------------

def test_reverberation_by_hand() -> None:
    rir = np.zeros(300)
    rir[37], rir[100], rir[250] = -1.0, 0.5, 0.25           # direct path at 37 (largest magnitude, negative)
    x = speech_like(4000, 5)
    expected = -x.astype(np.float64)
    expected[63:] += 0.5 * x[:-63]
    expected[213:] += 0.25 * x[:-213]
    expected *= np.sqrt(np.mean(x.astype(np.float64) ** 2) / np.mean(expected ** 2))
    y = reverberate(x, rir)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, expected, atol=1e-6)
    np.testing.assert_allclose(reverberate(x, 7 * rir), y, atol=1e-6)    # unit-energy RIR: its scale is irrelevant


def test_reverberated_click_is_not_delayed(banks: dict[str, Path]) -> None:
    bank = NoiseBank.from_dir(banks["rirs"])
    for key in bank.keys():
        rir = bank.read(key)
        assert np.argmax(np.abs(rir)) > 0                     # the synthetic RIRs have a delayed direct path
        click = np.zeros(20000, np.float32)
        click[5000] = 0.5
        y = reverberate(click, rir)
        lags = np.arange(-click.size + 1, click.size)
        assert lags[np.argmax(np.correlate(y, click, "full"))] == 0
        assert y.size == click.size
        assert abs(signal_power(y) / signal_power(click) - 1) < 1e-5


# ---- config --------------------------------------------------------------------------------------------------

def test_config_defaults_are_the_paper_settings() -> None:
    cfg = AugmentConfig()
    assert cfg.prob == 0.6
    assert cfg.types == {t: 1.0 for t in ("noise", "babble", "music", "babble_music", "rir")}
    assert cfg.snr == {c: (0.0, 20.0) for c in ("noise", "babble", "music", "nonspeech")}
    assert cfg.babble_talkers == (3, 6)
    warm = AugmentConfig.warmup()
    assert warm.prob == 1.0 and warm.types == {t: 1.0 for t in ("noise", "babble", "music", "babble_music")}


def test_config_from_yaml_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "aug.yaml"
    path.write_text("prob: 1.0\ntypes: {noise: 2, rir: 1}\nsnr: {noise: [5, 10]}\nbabble_talkers: [2, 4]\n")
    cfg = load_config(AugmentConfig, path)
    assert cfg.snr["noise"] == (5.0, 10.0) and cfg.snr["music"] == (0.0, 20.0)
    assert cfg.babble_talkers == (2, 4) and cfg.types == {"noise": 2.0, "rir": 1.0}
    for override, message in [("types={speed: 1}", "unknown augmentation type"), ("prob=1.5", "prob must lie"),
                              ("snr={noise: [10, 5]}", "low <= high"), ("babble_talkers=[0, 2]", "1 <= low"),
                              ("snr={reverb: [0, 1]}", "unknown snr key"), ("types={noise: -1}", ">= 0")]:
        with pytest.raises(ConfigError, match=message):
            load_config(AugmentConfig, None, [override])


def test_missing_banks_are_config_errors(banks: dict[str, Path]) -> None:
    musan = NoiseBank.from_dir(banks["musan_train"])
    rirs = NoiseBank.from_dir(banks["rirs"])
    with pytest.raises(ConfigError, match="type 'babble' .* no MUSAN bank"):
        Augmenter(AugmentConfig(), None, rirs)
    with pytest.raises(ConfigError, match="'rir'.*RIR bank"):
        Augmenter(AugmentConfig(), musan, None)
    with pytest.raises(ConfigError, match="'nonspeech'.*nonspeech bank"):
        Augmenter(AugmentConfig(types={"nonspeech": 1.0}), musan, rirs)
    Augmenter(AugmentConfig.warmup(), musan, None)            # warm-up needs no RIRs
    with pytest.raises(DataError, match="at least 20 distinct talkers"):
        talker_range(musan, (20, 30))
    speech = list(read_table(banks["musan_train"] / "utt2cat").values()).count("speech")
    assert talker_range(musan, (3, 6)) == (3, 6) and talker_range(musan, (3, speech + 4)) == (3, speech)


# ---- the augmenter -------------------------------------------------------------------------------------------

def additive_parts(aug, x: np.ndarray, y: np.ndarray, paths: dict[str, str]) -> list[tuple[np.ndarray, float]]:
    """Rebuild each noise of the description from the files; least-squares gains of y - x on them."""
    sizes = [len(aug.keys)] if aug.kind != "babble_music" else [len(aug.keys) - 1, 1]
    noises, start = [], 0
    for size in sizes:
        windows = [file_window(paths[k], o, x.size) for k, o in zip(aug.keys[start:start + size],
                                                                    aug.offsets[start:start + size])]
        noises.append(np.mean(np.stack(windows).astype(np.float64), axis=0))
        start += size
    basis = np.stack(noises, axis=1)
    gains, *_ = np.linalg.lstsq(basis, y.astype(np.float64) - x, rcond=None)
    residual = y - x - basis @ gains
    assert np.max(np.abs(residual)) < 1e-5                  # y - x is exactly a combination of the named noises
    return [(n * g, snr) for n, g, snr in zip(noises, gains, aug.snr_db)]


@pytest.mark.parametrize("kind", ["noise", "music", "babble", "nonspeech", "babble_music"])
def test_augmenter_levels_and_talkers(banks: dict[str, Path], kind: str) -> None:
    cfg = AugmentConfig(prob=1.0, types={kind: 1.0}, snr={"babble": (3.0, 3.0), "music": (12.0, 12.0),
                                                           "noise": (0.0, 20.0), "nonspeech": (0.0, 20.0)})
    musan, nonspeech = NoiseBank.from_dir(banks["musan_train"]), NoiseBank.from_dir(banks["nonspeech"])
    augmenter = Augmenter(cfg, musan, None, nonspeech)
    paths = {**read_table(banks["musan_train"] / "wav.scp"), **read_table(banks["nonspeech"] / "wav.scp")}
    utt2cat = {**read_table(banks["musan_train"] / "utt2cat"), **read_table(banks["nonspeech"] / "utt2cat")}
    rng = np.random.default_rng(11)
    talkers = set()
    for trial in range(12 if kind.startswith("babble") else 4):
        x = speech_like(24000 + 997 * trial, trial)
        y, aug = augmenter.apply(x, rng)
        assert aug.kind == kind
        parts = additive_parts(aug, x, y, paths)
        if kind.startswith("babble"):
            babble_keys = aug.keys[:-1] if kind == "babble_music" else aug.keys
            assert len(set(babble_keys)) == len(babble_keys) and 3 <= len(babble_keys) <= 6
            assert {utt2cat[k] for k in babble_keys} == {"speech"}
            talkers.add(len(babble_keys))
        reference = x.astype(np.float64)
        for noise, snr in parts:                              # babble+music: music SNR against the babbled signal
            assert abs(10 * np.log10(np.mean(reference ** 2) / np.mean(noise ** 2)) - snr) < 0.05
            reference = reference + noise
        if kind in ("babble", "babble_music"):
            assert aug.snr_db[0] == 3.0
        if kind == "babble_music":
            assert aug.snr_db[1] == 12.0 and utt2cat[aug.keys[-1]] == "music"
        if kind in ("noise", "music", "nonspeech"):
            assert utt2cat[aug.keys[0]] == kind and 0 <= aug.snr_db[0] <= 20
    if kind.startswith("babble"):
        assert len(talkers) >= 2                              # the talker count varies


def test_augmenter_never_modifies_its_input(banks: dict[str, Path]) -> None:
    cfg = AugmentConfig(prob=1.0, types={t: 1.0 for t in ("noise", "babble", "music", "babble_music", "rir",
                                                          "nonspeech")})
    augmenter = Augmenter(cfg, NoiseBank.from_dir(banks["musan_train"]), NoiseBank.from_dir(banks["rirs"]),
                          NoiseBank.from_dir(banks["nonspeech"]))
    rng = np.random.default_rng(5)
    kinds = set()
    for dtype in (np.float32, np.float64):
        for trial in range(18):
            x = speech_like(12000, trial).astype(dtype)
            before = x.copy()
            y, aug = augmenter.apply(x, rng)
            kinds.add(aug.kind)
            np.testing.assert_array_equal(x, before)
            assert y.dtype == np.float32 and y.shape == x.shape and not np.shares_memory(x, y)
            assert not np.array_equal(y, x.astype(np.float32))
    assert kinds == set(cfg.types)
    x = speech_like(12000, 0)
    y = Augmenter(AugmentConfig(prob=0.0), None, None)(x, rng)
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(x, y)


def test_augmenter_probability_and_weights(banks: dict[str, Path]) -> None:
    musan = NoiseBank.from_dir(banks["musan_train"])
    augmenter = Augmenter(AugmentConfig(prob=0.6, types={"noise": 3.0, "music": 1.0}), musan, None)
    rng = np.random.default_rng(0)
    kinds = [augmenter.apply(speech_like(800, 0), rng)[1].kind for _ in range(400)]
    augmented = [k for k in kinds if k != "clean"]
    assert 0.6 * 400 - 40 < len(augmented) < 0.6 * 400 + 40                # ~4 standard deviations
    assert 0.75 * len(augmented) - 40 < augmented.count("noise") < 0.75 * len(augmented) + 40


def test_augmenter_uses_only_the_passed_generator(banks: dict[str, Path]) -> None:
    augmenter = Augmenter(AugmentConfig(prob=1.0, types={"babble_music": 1.0, "rir": 1.0}),
                          NoiseBank.from_dir(banks["musan_train"]), NoiseBank.from_dir(banks["rirs"]))
    x = speech_like(9000, 4)
    first = []
    np.random.seed(1)
    rng = np.random.default_rng(42)
    for _ in range(6):
        first.append(augmenter(x, rng))
    np.random.seed(999)
    rng = np.random.default_rng(42)
    for expected in first:
        np.testing.assert_array_equal(augmenter(x, rng), expected)


def test_silent_crop_is_left_alone(banks: dict[str, Path]) -> None:
    augmenter = Augmenter(AugmentConfig(prob=1.0, types={"noise": 1.0}), NoiseBank.from_dir(banks["musan_train"]),
                          None)
    y, aug = augmenter.apply(np.zeros(5000, np.float32), np.random.default_rng(0))
    assert aug.kind.startswith("clean") and not y.any()
