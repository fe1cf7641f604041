"""A blind SNR estimate of one utterance from its frame energies (a speech/non-speech energy estimate).

Speech has pauses; additive noise fills them. The estimator:

1. splits the signal into 25-ms frames with a 10-ms hop and takes each frame's mean power;
2. takes the noise power as the mean power of the quietest ``noise_quantile`` share of frames (assumed to be
   pauses holding noise only);
3. returns ``10 log10(max(P_all - P_noise, floor) / P_noise)`` where ``P_all`` is the mean power of the whole
   signal: the ratio of speech power to noise power over the whole utterance, i.e. the SNR definition of the
   noisy sets (:func:`nawsv.data.augment.mix_at_snr`).

It is exact for stationary noise when the quietest frames are pure noise; it overestimates the noise (so
underestimates the SNR) when speech has no pauses, and is biased for non-stationary noise (music, babble), where
the quietest frames are quieter than the noise on average. It only has to rank utterances by how noisy they
are for a quality-measure calibrator, which learns the mapping from the data; tests pin its accuracy on
speech-like signals with pauses and white noise at known SNRs. Output is clamped to [-10, 60] dB.
"""
from __future__ import annotations

import numpy as np

from nawsv.utils.errors import DataError

FRAME_S = 0.025
HOP_S = 0.010
SNR_RANGE_DB = (-10.0, 60.0)


def frame_powers(signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean power of every full 25-ms frame at a 10-ms hop (one frame for a shorter signal)."""
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    frame, hop = int(FRAME_S * sample_rate), int(HOP_S * sample_rate)
    if x.size <= frame:
        return np.array([np.mean(np.square(x))])
    squares = np.concatenate(([0.0], np.cumsum(np.square(x))))
    starts = np.arange(0, x.size - frame + 1, hop)
    return (squares[starts + frame] - squares[starts]) / frame


def estimate_snr(signal: np.ndarray, sample_rate: int = 16000, noise_quantile: float = 0.1,
                 key: str = "signal") -> float:
    """The estimated SNR (dB) of one utterance (module docstring)."""
    if not 0.0 < noise_quantile < 0.5:
        raise DataError(f"noise_quantile must be in (0, 0.5), got {noise_quantile}")
    x = np.asarray(signal, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise DataError(f"{key}: empty audio has no SNR")
    powers = np.sort(frame_powers(x, sample_rate))
    quiet = powers[:max(1, int(round(noise_quantile * powers.size)))]
    noise = float(quiet.mean())
    total = float(np.mean(np.square(x)))
    if noise <= 0.0:
        return SNR_RANGE_DB[1]                                # digital silence in the pauses: no noise at all
    speech = max(total - noise, noise * 10.0 ** (SNR_RANGE_DB[0] / 10.0))
    return float(np.clip(10.0 * np.log10(speech / noise), *SNR_RANGE_DB))
