"""The NAW-SV paper's published numbers, as data, for the stage-7 comparison table.

Source: /work/shared/reference/nawsv_original_spec.md section 6.2 (final lines of the phase-2 EER logs
``exp_logs/L2V1`` and ``L2V2`` of github.com/chan-yeong0519/NAW-SV, WavLM-Base+ with NAW-SV warm-up) and
section 6.3 (the README's claims). All numbers are EER in % on VoxCeleb1-O cleaned (37,611 trials).
The paper's category "speech" (3-6 averaged MUSAN speech files) is nawsv's "babble". The paper reports no
minDCF.
"""
from __future__ import annotations

import dataclasses

SOURCE = ("nawsv_original_spec.md section 6.2 (exp_logs L2V1 / L2V2 of github.com/chan-yeong0519/NAW-SV) "
          "and section 6.3 (README claims)")
PAPER_TRIALS = "VoxCeleb1-O cleaned"
PAPER_NUM_TRIALS = 37611
PAPER_SNRS = (0, 5, 10, 15, 20)
PAPER_CATEGORIES = ("noise", "music", "babble")


@dataclasses.dataclass(frozen=True)
class PaperRun:
    """EERs (%) of one released run, per condition, with the logged averages and the README claims."""

    label: str
    training_set: str
    epoch: int
    clean_full: float                          # EER_full: average of full-utterance and 25-pair TTA cosine
    clean_segment: float                       # EER_clean: 25-pair TTA cosine
    noisy: dict[tuple[str, int], float]        # (category, snr) -> EER, TTA scoring
    category_means: dict[str, float]
    snr_means: dict[int, float]
    noisy_mean_15: float                       # mean of the 15 cells noise/music/babble x 0-20 dB
    readme_clean: float                        # README claim, = clean_full rounded
    readme_noisy: float                        # README claim; its averaging is unresolved (spec 6.3)


def _cells(noise: tuple[float, ...], music: tuple[float, ...],
           babble: tuple[float, ...]) -> dict[tuple[str, int], float]:
    return {(category, snr): value
            for category, values in (("noise", noise), ("music", music), ("babble", babble))
            for snr, value in zip(PAPER_SNRS, values, strict=True)}


VOX1_EP23 = PaperRun(
    label="paper Vox1 (ep23)", training_set="VoxCeleb1 dev", epoch=23, clean_full=1.451, clean_segment=1.552,
    noisy=_cells(noise=(5.297, 3.349, 2.440, 2.010, 1.808), music=(5.521, 3.392, 2.350, 2.000, 1.691),
                 babble=(7.143, 3.585, 2.525, 2.047, 1.754)),
    category_means={"noise": 2.981, "music": 2.991, "babble": 3.411},
    snr_means={0: 5.99, 5: 3.44, 10: 2.44, 15: 2.02, 20: 1.75},
    noisy_mean_15=3.128, readme_clean=1.45, readme_noisy=2.96)

VOX2_EP25 = PaperRun(
    label="paper Vox2 (ep25)", training_set="VoxCeleb2 dev", epoch=25, clean_full=0.846, clean_segment=1.048,
    noisy=_cells(noise=(4.393, 2.462, 1.840, 1.351, 1.250), music=(4.524, 2.541, 1.697, 1.324, 1.164),
                 babble=(6.226, 2.834, 1.840, 1.447, 1.175)),
    category_means={"noise": 2.259, "music": 2.250, "babble": 2.704},
    snr_means={0: 5.05, 5: 2.61, 10: 1.79, 15: 1.37, 20: 1.20},
    noisy_mean_15=2.405, readme_clean=0.85, readme_noisy=2.31)

PAPER_RUNS = (VOX1_EP23, VOX2_EP25)
