"""Additive noise, babble, music and reverberation: one implementation for training and for noisy test sets.

Level definition (used for every SNR in nawsv): the power of a signal is ``mean(x**2)`` over the whole
signal, computed in float64, with no floor. The SNR of a mixture ``y = s + g*n`` is
``10*log10(P(s) / P(g*n))``; :func:`mix_at_snr` picks ``g`` so that it equals the target exactly (up to float
rounding). The released code used ``10*log10(mean + 1e-4)``, which biases quiet signals (spec 2.2);
``level_floor: 1.0e-4`` reproduces it.

Digital silence (power exactly 0) has no level to scale: :func:`mix_at_snr` raises
:class:`SilentAudioError` for silent speech or noise. A drawn noise window that is silent is redrawn from
the same generator (up to :data:`MAX_REDRAWS` times); the training :class:`Augmenter` returns a silent
crop unchanged.

Reverberation: the RIR is normalised to unit energy and aligned on its direct path (its largest
magnitude), so the reverberant output is not delayed; the output has the input's length and is rescaled
to the dry signal's power (so an RIR changes the timbre, not the level). ``rir_mode: truncated`` is the
released code's version (spec 2.3): unit-energy RIR, full convolution cut to the input length, no alignment
and no level restoration.

MUSAN draws: uniform over files, or (``musan_chunks``) uniform over the released 5-s pieces
(:mod:`nawsv.data.noise_chunks`).

Babble averages 3-6 distinct talkers (sample-wise mean, as the original); babble+music draws two
independent SNRs, the music SNR measured against the babbled signal. Every random choice comes from the
``numpy.random.Generator`` passed in; inputs are never modified in place (spec 3.2).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Literal, Sequence

import numpy as np
from scipy import signal

from nawsv.data.noise_bank import NoiseBank
from nawsv.data.noise_chunks import ChunkedNoiseBank
from nawsv.utils.errors import AudioError, ConfigError, DataError

log = logging.getLogger(__name__)

AUGMENT_TYPES = ("noise", "babble", "music", "babble_music", "rir", "nonspeech")
ADDITIVE_CATEGORIES = {"noise": "noise", "babble": "speech", "music": "music", "nonspeech": "nonspeech"}
SOURCES_OF_TYPE = {"noise": ("noise",), "babble": ("babble",), "music": ("music",), "babble_music": ("babble", "music"),
                   "nonspeech": ("nonspeech",), "rir": ()}
MAX_REDRAWS = 8
DEFAULT_SNR = (0.0, 20.0)
RELEASED_LEVEL_FLOOR = 1e-4                      # the released P_dB = 10*log10(mean(x^2) + 1e-4) (spec 2.2)
RIR_MODES = ("aligned", "truncated")
Bank = NoiseBank | ChunkedNoiseBank


class SilentAudioError(AudioError):
    """A signal of zero power where a level is needed (speech or noise of digital silence)."""


def signal_power(x: np.ndarray) -> float:
    """``mean(x**2)`` in float64: the level definition of this module (no floor)."""
    return float(np.mean(np.square(x, dtype=np.float64)))


def add_scaled(speech: np.ndarray, noise: np.ndarray, gain: float) -> np.ndarray:
    """``speech + gain * noise`` computed in float64, returned as float32 (shared by synthesis and replay)."""
    if speech.shape != noise.shape:
        raise ValueError(f"speech and noise must have the same shape, got {speech.shape} and {noise.shape}")
    return (speech.astype(np.float64) + gain * noise.astype(np.float64)).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float,
               level_floor: float = 0.0) -> tuple[np.ndarray, float]:
    """Add ``noise`` scaled by ``gain`` so that ``10*log10(P(speech) / P(gain*noise)) == snr_db``.

    With a ``level_floor`` f the levels are 10*log10(P + f) and the gain is the released one,
    sqrt(10^((P_dB(s) - P_dB(n) - snr) / 10)) (spec 2.2): a quiet signal counts as louder than it is.
    """
    speech_power, noise_power = signal_power(speech), signal_power(noise)
    if speech_power == 0.0:
        raise SilentAudioError("speech is digital silence (power 0): an SNR relative to it is undefined")
    if noise_power == 0.0:
        raise SilentAudioError("noise is digital silence (power 0): it cannot be scaled to an SNR")
    gain = math.sqrt((speech_power + level_floor) / ((noise_power + level_floor) * 10.0 ** (snr_db / 10.0)))
    return add_scaled(speech, noise, gain), gain


@dataclasses.dataclass(frozen=True)
class NoiseDraw:
    """Noise drawn for one utterance: the files, their window offsets and the averaged samples (float64)."""

    keys: tuple[str, ...]
    offsets: tuple[int, ...]
    samples: np.ndarray


def average_windows(windows: Sequence[np.ndarray]) -> np.ndarray:
    """Sample-wise mean of equal-length windows in float64 (babble = mean of its talkers, not the sum)."""
    total = windows[0].astype(np.float64)
    for window in windows[1:]:
        total += window
    if len(windows) > 1:
        total /= len(windows)
    return total


def draw_noise(bank: Bank, category: str, num_samples: int, rng: np.random.Generator,
               count: int = 1) -> NoiseDraw:
    """``count`` distinct files of ``category`` at random offsets, averaged; silent draws are redrawn."""
    keys = bank.keys(category)
    if count > len(keys):
        raise DataError(f"noise bank {bank.root}: {count} distinct {category!r} files needed but only {len(keys)} "
                        f"exist; lower babble_talkers or use a larger bank")
    for _ in range(MAX_REDRAWS):
        chosen = tuple(keys[i] for i in rng.choice(len(keys), size=count, replace=False))
        windows, offsets = zip(*(bank.read_window(key, num_samples, rng) for key in chosen), strict=True)
        samples = average_windows(windows)
        if signal_power(samples) > 0.0:
            return NoiseDraw(chosen, tuple(offsets), samples)
    raise SilentAudioError(f"noise bank {bank.root}: {MAX_REDRAWS} draws of {category!r} noise in a row were digital "
                           f"silence (last: {', '.join(chosen)}); remove silent files from the bank's wav.scp")


def replay_noise(bank: Bank, keys: Sequence[str], offsets: Sequence[int], num_samples: int) -> np.ndarray:
    """The samples of a recorded :class:`NoiseDraw`, bit for bit."""
    return average_windows([bank.read_at(key, num_samples, offset) for key, offset in zip(keys, offsets, strict=True)])


def talker_range(bank: Bank, talkers: tuple[int, int]) -> tuple[int, int]:
    """Babble talker counts this bank can supply: an error below the minimum, capped (with a warning) above."""
    available = len(bank.keys(ADDITIVE_CATEGORIES["babble"]))
    low, high = talkers
    if available < low:
        raise DataError(f"noise bank {bank.root} holds {available} speech file(s) but babble needs at least {low} "
                        f"distinct talkers; lower babble_talkers or use a bank with more speech")
    if available < high:
        log.warning("noise bank %s holds only %d speech files: babble uses %d-%d talkers instead of %d-%d",
                    bank.root, available, low, available, low, high)
    return low, min(high, available)


def reverberate(speech: np.ndarray, rir: np.ndarray, mode: str = "aligned") -> np.ndarray:
    """Convolve with the unit-energy RIR; ``aligned``: on its direct path, same power as ``speech``;
    ``truncated``: the released version, the first ``len(speech)`` samples of the full convolution as they are."""
    if mode not in RIR_MODES:
        raise ValueError(f"unknown rir_mode {mode!r}; choose from {list(RIR_MODES)}")
    rir = np.asarray(rir, dtype=np.float64)
    energy = float(np.sum(rir * rir))
    if energy == 0.0:
        raise SilentAudioError("room impulse response is all zeros; remove it from the RIR bank")
    rir = rir / math.sqrt(energy)
    dry = np.asarray(speech, dtype=np.float64)
    if mode == "truncated":
        return signal.oaconvolve(dry, rir)[:dry.size].astype(np.float32)
    direct = int(np.argmax(np.abs(rir)))
    wet = signal.oaconvolve(dry, rir)[direct:direct + dry.size]
    dry_power, wet_power = signal_power(dry), signal_power(wet)
    if dry_power == 0.0 or wet_power == 0.0:
        return np.zeros(dry.size, dtype=np.float32)
    return (wet * math.sqrt(dry_power / wet_power)).astype(np.float32)


def _default_types() -> dict[str, float]:
    return {"noise": 1.0, "babble": 1.0, "music": 1.0, "babble_music": 1.0, "rir": 1.0}


def _default_snr() -> dict[str, tuple[float, float]]:
    return {name: DEFAULT_SNR for name in ADDITIVE_CATEGORIES}


@dataclasses.dataclass
class AugmentConfig:
    """Training augmentation; the defaults are the paper's fine-tune setting (spec 4.4)."""

    prob: float = 0.6                              # probability that a crop is augmented at all
    types: dict[str, float] = dataclasses.field(default_factory=_default_types)   # type -> relative weight
    snr: dict[str, tuple[float, float]] = dataclasses.field(default_factory=_default_snr)  # uniform SNR range, dB
    babble_talkers: tuple[int, int] = (3, 6)       # distinct talkers per babble, uniform integer in [lo, hi]
    level_floor: float = 0.0                       # added to mean(x^2) in every level; released: 1e-4 (spec 2.2)
    musan_chunks: bool = False                     # draw uniformly over the released 5-s MUSAN pieces (spec 5.3)
    rir_mode: Literal["aligned", "truncated"] = "aligned"   # truncated: the released RIR path (spec 2.3)

    def __post_init__(self) -> None:
        if self.level_floor < 0 or not math.isfinite(self.level_floor):
            raise ValueError(f"level_floor must be a finite value >= 0, got {self.level_floor}")
        if self.rir_mode not in RIR_MODES:
            raise ValueError(f"rir_mode must be one of {list(RIR_MODES)}, got {self.rir_mode!r}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob must lie in [0, 1], got {self.prob}")
        unknown = sorted(set(self.types) - set(AUGMENT_TYPES))
        if unknown:
            raise ValueError(f"unknown augmentation type(s) {unknown}; choose from {list(AUGMENT_TYPES)}")
        if any(w < 0 or not math.isfinite(w) for w in self.types.values()):
            raise ValueError(f"type weights must be finite and >= 0, got {self.types}")
        if self.prob > 0 and sum(self.types.values()) <= 0:
            raise ValueError("types: at least one weight must be > 0 when prob > 0")
        unknown = sorted(set(self.snr) - set(ADDITIVE_CATEGORIES))
        if unknown:
            raise ValueError(f"unknown snr key(s) {unknown}; choose from {list(ADDITIVE_CATEGORIES)}")
        self.snr = {**_default_snr(), **{k: tuple(v) for k, v in self.snr.items()}}
        for name, (low, high) in self.snr.items():
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"snr.{name} must be a finite range [low, high] with low <= high, got {[low, high]}")
        low, high = self.babble_talkers
        if not 1 <= low <= high:
            raise ValueError(f"babble_talkers must satisfy 1 <= low <= high, got {list(self.babble_talkers)}")

    @classmethod
    def warmup(cls) -> "AugmentConfig":
        """Phase-1 setting (spec 3.1): always noisy, noise / babble / music / babble+music equally."""
        return cls(prob=1.0, types={"noise": 1.0, "babble": 1.0, "music": 1.0, "babble_music": 1.0})


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What was done to one crop, for logging: the type, the noise/RIR files, their offsets and the SNRs."""

    kind: str
    keys: tuple[str, ...] = ()
    offsets: tuple[int, ...] = ()
    snr_db: tuple[float, ...] = ()


class Augmenter:
    """Draws one augmentation per call from a passed Generator; returns a new float32 array."""

    def __init__(self, cfg: AugmentConfig, musan: NoiseBank | None, rirs: NoiseBank | None,
                 nonspeech: NoiseBank | None = None) -> None:
        self.cfg = cfg
        if cfg.musan_chunks and isinstance(musan, NoiseBank):
            musan = ChunkedNoiseBank(musan)
        active = {name: weight for name, weight in cfg.types.items() if weight > 0 and cfg.prob > 0}
        self._kinds = tuple(sorted(active))
        total = sum(active.values())
        self._weights = np.array([active[k] / total for k in self._kinds]) if active else np.zeros(0)
        self._banks: dict[str, NoiseBank] = {}
        for kind in self._kinds:
            for source in SOURCES_OF_TYPE[kind]:
                bank = nonspeech if source == "nonspeech" else musan
                if bank is None:
                    option = "nonspeech bank" if source == "nonspeech" else "MUSAN bank (e.g. data/musan_train)"
                    raise ConfigError(f"augmentation type {kind!r} has weight {cfg.types[kind]} but no {option} was "
                                      f"given; pass the bank or set its weight to 0")
                bank.keys(ADDITIVE_CATEGORIES[source])
                self._banks[source] = bank
        self._talkers = talker_range(self._banks["babble"], cfg.babble_talkers) if "babble" in self._banks else None
        if "rir" in self._kinds:
            if rirs is None:
                raise ConfigError(f"augmentation type 'rir' has weight {cfg.types['rir']} but no RIR bank was given "
                                  f"(e.g. data/rirs); pass it or set the weight to 0")
            self._rir_keys = rirs.keys()
        self._rirs = rirs

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(x, rng)[0]

    def apply(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Augmentation]:
        """Augment a 1-D waveform; returns the new samples and a description of what was done."""
        x = np.asarray(x)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"expected a non-empty 1-D waveform, got shape {x.shape}")
        if rng.random() >= self.cfg.prob or not self._kinds:
            return x.astype(np.float32, copy=True), Augmentation("clean")
        kind = self._kinds[int(rng.choice(len(self._kinds), p=self._weights))]
        if signal_power(x) == 0.0:
            return x.astype(np.float32, copy=True), Augmentation("clean (silent input)")
        if kind == "rir":
            key = self._rir_keys[int(rng.integers(len(self._rir_keys)))]
            return reverberate(x, self._rirs.read(key), self.cfg.rir_mode), Augmentation(kind, (key,), (0,))
        y, keys, offsets, snrs = x, (), (), ()
        for source in SOURCES_OF_TYPE[kind]:
            count = int(rng.integers(self._talkers[0], self._talkers[1] + 1)) if source == "babble" else 1
            draw = draw_noise(self._banks[source], ADDITIVE_CATEGORIES[source], x.size, rng, count)
            snr = float(rng.uniform(*self.cfg.snr[source]))
            y, _ = mix_at_snr(y, draw.samples, snr, self.cfg.level_floor)
            keys, offsets, snrs = keys + draw.keys, offsets + draw.offsets, snrs + (snr,)
        return y, Augmentation(kind, keys, offsets, snrs)
