"""Deterministic synthetic corpora in the real on-disk layouts (VoxCeleb, MUSAN, RIRS_NOISES, Nonspeech100).

The mini recipe and the tests need data that exercises exactly the code paths real data does, on any
machine, in seconds. Voices come from a small source-filter synthesiser whose speaker parameters
differ the way real voices do (pitch, vocal-tract length via formant scaling, speaking rate, glottal
spectral tilt, breathiness, jitter/shimmer, accent-like vowel shifts); each recording session adds
channel colouring, level, background noise and small pitch/rate drifts, so verification is learnable
but not trivial. Every random choice flows from one seed: the same seed gives the same bytes.
"""
from __future__ import annotations

import dataclasses
import string
from pathlib import Path

import numpy as np
from scipy import signal

from nawsv.data.audio import SAMPLE_RATE, write_audio
from nawsv.utils.seeding import rng_for

# (F1, F2, F3) in Hz of an adult male vocal tract for a few vowels; speakers scale and shift them.
VOWELS = np.array([
    [730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480],
    [570, 840, 2410], [660, 1720, 2410], [440, 1020, 2240], [490, 1350, 1690],
], dtype=np.float64)
FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 140.0])


@dataclasses.dataclass(frozen=True)
class Voice:
    """Speaker-level parameters of the synthesiser."""

    f0: float            # mean fundamental frequency, Hz
    f0_range: float      # intonation depth, semitones
    vtl: float           # formant scale factor (shorter vocal tract -> higher formants)
    tilt: float          # one-pole coefficient shaping the glottal spectrum (higher = darker)
    rate: float          # syllables per second
    jitter: float        # relative period perturbation
    shimmer: float       # relative pulse amplitude perturbation
    breath: float        # aspiration noise relative to voicing
    vowel_shift: tuple   # per-vowel formant offsets (accent), multiplicative

    @staticmethod
    def sample(rng: np.random.Generator) -> "Voice":
        female = rng.random() < 0.5
        f0 = rng.uniform(165, 255) if female else rng.uniform(85, 155)
        vtl = rng.uniform(1.05, 1.22) if female else rng.uniform(0.84, 1.04)
        return Voice(f0=f0, f0_range=rng.uniform(1.5, 5.0), vtl=vtl, tilt=rng.uniform(0.85, 0.985),
                     rate=rng.uniform(3.0, 6.0), jitter=rng.uniform(0.003, 0.025),
                     shimmer=rng.uniform(0.02, 0.15), breath=rng.uniform(0.0, 0.25),
                     vowel_shift=tuple(map(tuple, rng.uniform(0.92, 1.08, size=(len(VOWELS), 3)))))


@dataclasses.dataclass(frozen=True)
class Session:
    """Recording-level variation of one speaker (a 'video' in VoxCeleb terms)."""

    gain_db: float
    f0_shift: float
    rate_shift: float
    eq: tuple            # second-order sections of a random channel colouring
    noise_snr_db: float

    @staticmethod
    def sample(rng: np.random.Generator) -> "Session":
        sections = []
        for _ in range(2):
            centre = rng.uniform(200, 5000)
            gain = rng.uniform(-6, 6)
            sections.append(_peaking_biquad(centre, gain, q=rng.uniform(0.5, 1.5)))
        return Session(gain_db=rng.uniform(-12, 0), f0_shift=rng.uniform(0.95, 1.05),
                       rate_shift=rng.uniform(0.9, 1.1), eq=tuple(sections), noise_snr_db=rng.uniform(25, 45))


def _peaking_biquad(centre: float, gain_db: float, q: float) -> tuple:
    """RBJ peaking equaliser as one second-order section."""
    amp = 10 ** (gain_db / 40)
    omega = 2 * np.pi * centre / SAMPLE_RATE
    alpha = np.sin(omega) / (2 * q)
    b = np.array([1 + alpha * amp, -2 * np.cos(omega), 1 - alpha * amp])
    a = np.array([1 + alpha / amp, -2 * np.cos(omega), 1 - alpha / amp])
    return tuple(np.concatenate([b / a[0], a / a[0]]))


def _resonator(freq: float, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    radius = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * np.pi * min(freq, 0.45 * SAMPLE_RATE) / SAMPLE_RATE
    a = np.array([1.0, -2 * radius * np.cos(theta), radius ** 2])
    return np.array([a.sum()]), a      # unit gain at DC keeps levels comparable across formants


def _glottal_source(n: int, f0_track: np.ndarray, voice: Voice, rng: np.random.Generator) -> np.ndarray:
    """Pulse train following ``f0_track`` with jitter and shimmer, spectrally tilted."""
    period_noise = 1 + voice.jitter * rng.standard_normal(n)
    phase = np.cumsum(f0_track * period_noise / SAMPLE_RATE)
    pulses = np.zeros(n)
    starts = np.flatnonzero(np.diff(np.floor(phase), prepend=0) > 0)
    pulses[starts] = 1 + voice.shimmer * rng.standard_normal(starts.size)
    source = signal.lfilter([1.0], [1.0, -voice.tilt], pulses)
    source = signal.lfilter([1.0, -1.0], [1.0, -0.99], source)           # remove DC build-up
    return source / (np.std(source) + 1e-9)


def _fade(n: int, fade: int) -> np.ndarray:
    window = np.ones(n)
    fade = min(fade, n // 2)
    if fade:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
        window[:fade], window[-fade:] = ramp, ramp[::-1]
    return window


def synthesize_utterance(voice: Voice, session: Session, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Synthesise ``duration`` seconds of babble-like speech by ``voice`` in ``session``."""
    n = int(duration * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = voice.f0 * session.f0_shift
    contour = -voice.f0_range * 0.5 * t / max(duration, 1e-3)             # declination
    for _ in range(3):
        contour += voice.f0_range / 3 * np.sin(2 * np.pi * rng.uniform(0.3, 2.0) * t + rng.uniform(0, 2 * np.pi))
    source = _glottal_source(n, f0 * 2 ** (contour / 12), voice, rng)
    aspiration = rng.standard_normal(n)
    out = np.zeros(n)
    rate = voice.rate * session.rate_shift
    position = int(rng.uniform(0.05, 0.2) * SAMPLE_RATE)
    while position < n - int(0.05 * SAMPLE_RATE):
        if rng.random() < 0.55:                                           # consonant: band-passed noise burst
            length = int(rng.uniform(0.03, 0.09) * SAMPLE_RATE)
            centre = rng.uniform(1800, 6500) * voice.vtl
            low, high = centre / 1.4, min(centre * 1.4, 0.48 * SAMPLE_RATE)
            sos = signal.butter(2, [low, high], btype="bandpass", fs=SAMPLE_RATE, output="sos")
            burst = signal.sosfilt(sos, rng.standard_normal(length)) * rng.uniform(0.2, 0.6)
            end = min(position + length, n)
            out[position:end] += (burst * _fade(length, 48))[:end - position]
            position = end
        length = int(rng.uniform(0.5, 1.2) / rate * SAMPLE_RATE)             # vowel nucleus
        end = min(position + length, n)
        if end - position < 160:
            break
        vowel = rng.integers(len(VOWELS))
        segment = source[position:end] + voice.breath * aspiration[position:end]
        formants = VOWELS[vowel] * voice.vtl * np.array(voice.vowel_shift[vowel])
        for freq, bandwidth in zip(formants, FORMANT_BANDWIDTHS * voice.vtl, strict=True):
            b, a = _resonator(freq, bandwidth)
            segment = signal.lfilter(b, a, segment)
        segment = segment / (np.std(segment) + 1e-9) * rng.uniform(0.6, 1.0)
        out[position:end] += segment * _fade(end - position, 80)
        position = end + (int(rng.uniform(0.1, 0.35) * SAMPLE_RATE) if rng.random() < 0.12 else 0)
    for section in session.eq:
        out = signal.sosfilt(np.array([section]), out)
    out = out / (np.sqrt(np.mean(out ** 2)) + 1e-9) * 0.1 * 10 ** (session.gain_db / 20)
    noise_level = np.sqrt(np.mean(out ** 2)) * 10 ** (-session.noise_snr_db / 20)
    out += noise_level * _coloured_noise(n, rng.uniform(-1, 1), rng)
    return np.clip(out, -0.99, 0.99).astype(np.float32)


def _coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with a 1/f^exponent power spectrum, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n)
    return noise / (np.std(noise) + 1e-9)


def synthesize_noise(duration: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary or impulsive non-speech noise (coloured noise, hum, clicks, modulated fan)."""
    n = int(duration * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    kind = rng.integers(4)
    if kind == 0:
        x = _coloured_noise(n, rng.uniform(-0.5, 2.0), rng)
    elif kind == 1:
        mains = rng.choice([50.0, 60.0])
        x = sum(np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 6.28)) / k for k in range(1, 8))
        x = x + 0.3 * _coloured_noise(n, 1.0, rng)
    elif kind == 2:
        x = 0.2 * _coloured_noise(n, 0.5, rng)
        for start in rng.integers(0, n - 400, size=int(duration * rng.uniform(2, 8))):
            x[start:start + 400] += rng.uniform(1, 4) * np.exp(-np.arange(400) / 60) * rng.standard_normal(400)
    else:
        x = _coloured_noise(n, 1.5, rng) * (1 + 0.6 * np.sin(2 * np.pi * rng.uniform(2, 15) * t))
    x = np.asarray(x, dtype=np.float64)
    return (0.1 * x / (np.sqrt(np.mean(x ** 2)) + 1e-9)).astype(np.float32)


def synthesize_music(duration: float, rng: np.random.Generator) -> np.ndarray:
    """Harmonic chords that change on a beat, with percussive noise hits."""
    n = int(duration * SAMPLE_RATE)
    tempo = rng.uniform(70, 160)
    beat = int(60 / tempo * SAMPLE_RATE)
    out = np.zeros(n)
    root = rng.uniform(110, 330)
    for start in range(0, n, 2 * beat):
        end = min(start + 2 * beat, n)
        t = np.arange(end - start) / SAMPLE_RATE
        chord = root * 2 ** (rng.choice([0, 2, 4, 5, 7, 9, 12], size=3) / 12)
        tone = sum(np.sin(2 * np.pi * f * h * t) / h ** 1.5 for f in chord for h in range(1, 5))
        out[start:end] += tone * np.exp(-t * rng.uniform(0.5, 3))
    for start in range(0, n, beat):
        hit = min(800, n - start)
        out[start:start + hit] += 2 * rng.standard_normal(hit) * np.exp(-np.arange(hit) / 120)
    return (0.1 * out / (np.sqrt(np.mean(out ** 2)) + 1e-9)).astype(np.float32)


def synthesize_nonspeech(duration: float, rng: np.random.Generator) -> np.ndarray:
    """Environmental-sound-like events: chirps, beeps and noise bursts over a quiet floor."""
    n = int(duration * SAMPLE_RATE)
    out = 0.05 * _coloured_noise(n, 1.0, rng)
    for _ in range(int(duration * rng.uniform(1, 4))):
        length = int(rng.uniform(0.1, 0.6) * SAMPLE_RATE)
        start = rng.integers(0, max(n - length, 1))
        t = np.arange(length) / SAMPLE_RATE
        if rng.random() < 0.5:
            f_start, f_end = rng.uniform(300, 4000, size=2)
            event = signal.chirp(t, f_start, t[-1], f_end)
        else:
            event = _coloured_noise(length, rng.uniform(0, 2), rng)
        out[start:start + length] += event[:n - start] * _fade(length, 160)[:n - start]
    return (0.1 * out / (np.sqrt(np.mean(out ** 2)) + 1e-9)).astype(np.float32)


def synthesize_rir(rng: np.random.Generator, room: str) -> np.ndarray:
    """An exponentially decaying room response with a delayed direct path and sparse early reflections."""
    rt60 = {"smallroom": (0.15, 0.4), "mediumroom": (0.3, 0.7), "largeroom": (0.5, 1.0)}[room]
    rt60 = rng.uniform(*rt60)
    n = int(rt60 * 1.2 * SAMPLE_RATE)
    delay = int(rng.uniform(0.002, 0.01) * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60) * 0.3
    tail[:delay + 16] = 0
    rir = tail
    rir[delay] = 1.0
    for reflection in rng.integers(delay + 20, delay + int(0.03 * SAMPLE_RATE), size=6):
        rir[reflection] += rng.uniform(-0.6, 0.6)
    return (rir / np.max(np.abs(rir)) * 0.9).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class MiniCorpusSpec:
    """Sizes of the synthetic corpus; the defaults keep the whole mini recipe to CPU minutes."""

    seed: int = 0
    dev_speakers: int = 40
    test_speakers: int = 12
    dev_utts_per_speaker: int = 8
    test_utts_per_speaker: int = 6
    sessions_per_speaker: int = 3
    min_duration: float = 2.0
    max_duration: float = 4.5
    musan_files_per_category: int = 12
    musan_duration: float = 6.0
    babble_talkers: int = 10
    rirs_per_room: int = 3
    nonspeech_files: int = 10

    def __post_init__(self) -> None:
        at_least = {"dev_speakers": 2, "test_speakers": 2, "dev_utts_per_speaker": 2, "test_utts_per_speaker": 2,
                    "sessions_per_speaker": 1, "musan_files_per_category": 2, "babble_talkers": 1,
                    "rirs_per_room": 1, "nonspeech_files": 1}
        for name, low in at_least.items():      # trials need two speakers; each MUSAN half needs every category
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not 0 < self.min_duration <= self.max_duration or self.musan_duration <= 0:
            raise ValueError(f"need 0 < min_duration <= max_duration and musan_duration > 0, got "
                             f"{self.min_duration}, {self.max_duration}, {self.musan_duration}")


def _video_id(rng: np.random.Generator) -> str:
    alphabet = string.ascii_letters + string.digits + "-_"
    return "".join(alphabet[i] for i in rng.integers(len(alphabet), size=11))


def _write_speakers(root: Path, speaker_ids: list[str], utts_per_speaker: int, spec: MiniCorpusSpec,
                    part: str) -> list[str]:
    keys = []
    for spk in speaker_ids:
        rng = rng_for(spec.seed, "voice", spk)
        voice = Voice.sample(rng)
        sessions = [(_video_id(rng), Session.sample(rng)) for _ in range(spec.sessions_per_speaker)]
        for index in range(utts_per_speaker):
            video, session = sessions[index % len(sessions)]
            urng = rng_for(spec.seed, "utt", spk, index)
            audio = synthesize_utterance(voice, session, urng.uniform(spec.min_duration, spec.max_duration), urng)
            key = f"{spk}/{video}/{index + 1:05d}.wav"
            write_audio(root / part / "wav" / key, audio)
            keys.append(key)
    return keys


def _voxceleb_trials(keys: list[str], seed: int) -> list[tuple[int, str, str]]:
    """All same-speaker pairs plus as many random different-speaker pairs (Vox1-O is about balanced)."""
    rng = rng_for(seed, "trials")
    targets, nontargets = [], []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            (targets if a.split("/")[0] == b.split("/")[0] else nontargets).append((a, b))
    chosen = rng.choice(len(nontargets), size=min(len(targets), len(nontargets)), replace=False)
    trials = [(1, a, b) for a, b in targets] + [(0, *nontargets[i]) for i in sorted(chosen)]
    order = rng.permutation(len(trials))
    return [trials[i] for i in order]


def make_mini_corpus(root: str | Path, spec: MiniCorpusSpec = MiniCorpusSpec()) -> dict[str, Path]:
    """Write the synthetic corpora under ``root``; return the roots of each corpus."""
    root = Path(root)
    vox = root / "voxceleb"
    dev_ids = [f"id{10001 + i}" for i in range(spec.dev_speakers)]
    test_ids = [f"id{20001 + i}" for i in range(spec.test_speakers)]
    _write_speakers(vox, dev_ids, spec.dev_utts_per_speaker, spec, "dev")
    test_keys = _write_speakers(vox, test_ids, spec.test_utts_per_speaker, spec, "test")
    trials = _voxceleb_trials(test_keys, spec.seed)
    trial_path = vox / "veri_test.txt"
    trial_path.write_text("".join(f"{label} {a} {b}\n" for label, a, b in trials), encoding="utf-8")

    musan = root / "musan"
    for index in range(spec.musan_files_per_category):
        write_audio(musan / "noise" / "free-sound" / f"noise-free-sound-{index:04d}.wav",
                    synthesize_noise(spec.musan_duration, rng_for(spec.seed, "noise", index)))
        write_audio(musan / "music" / "fma" / f"music-fma-{index:04d}.wav",
                    synthesize_music(spec.musan_duration, rng_for(spec.seed, "music", index)))
    for index in range(spec.babble_talkers):
        rng = rng_for(spec.seed, "babble", index)
        voice, session = Voice.sample(rng), Session.sample(rng)
        write_audio(musan / "speech" / "librivox" / f"speech-librivox-{index:04d}.wav",
                    synthesize_utterance(voice, session, spec.musan_duration, rng))

    rirs = root / "RIRS_NOISES" / "simulated_rirs"
    for room in ("smallroom", "mediumroom", "largeroom"):
        for index in range(spec.rirs_per_room):
            rng = rng_for(spec.seed, "rir", room, index)
            write_audio(rirs / room / f"Room{index + 1:03d}" / f"Room{index + 1:03d}-00001.wav",
                        synthesize_rir(rng, room))

    nonspeech = root / "Nonspeech"
    for index in range(spec.nonspeech_files):
        write_audio(nonspeech / f"n{index + 1}.wav",
                    synthesize_nonspeech(rng_for(spec.seed, "nonspeech", index).uniform(2, 5),
                                         rng_for(spec.seed, "nonspeech-audio", index)))
    return {"voxceleb": vox, "trials": trial_path, "musan": musan, "rirs": rirs, "nonspeech": nonspeech}
