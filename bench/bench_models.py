"""Model-side overhead of nawsv against the floor transformers sets (DESIGN §9), on CPU with 2 threads.

For the tiny preset and the random-init Base and Large architectures of WavLM, HuBERT and wav2vec 2.0
(``--quick``: tiny only), on 2 speakers x 2 utterances of 3 s:
- extraction: student forward (eval, no grad) / bare HF model forward                   [target <= 1.15x]
- warm-up step: student fwd+bwd (masked, adapters) + teacher forward + hint + shared head on both + E-APN,
  / bare HF model forward+backward of the student input                                 [target <= 1.5x]
- fine-tune, SSL frozen: student forward (no grad) + ECAPA + AAM fwd+bwd / bare forward
- fine-tune, joint: student fwd+bwd (masked) + ECAPA + AAM / bare forward+backward
The bare model (``WavLMModel``, ``HubertModel`` or ``Wav2Vec2Model``) is the same config (layerdrop 0, no
SpecAugment), in train mode for the backward cases.
The CPU is shared with other jobs, so each case is timed right after its baseline, repeatedly: a ratio is
the median of these paired ratios (both sides of a pair see the same load), and the seconds shown are the
minimum over repeats (the least disturbed run). One untimed warm-up run of everything comes first.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from bench.bench_frozen_cnn import frozen_cnn_figures
from bench.common import Figure
from nawsv.losses.aam import AAMSoftmax
from nawsv.losses.eapn import EAPNLoss
from nawsv.losses.hint import HintLoss
from nawsv.models.config import SSLConfig
from nawsv.models.ecapa import EcapaTdnn
from nawsv.models.heads import WarmupHead
from nawsv.models.ssl import build_student, build_teacher

SPEAKERS, SECONDS, NUM_CLASSES = 2, 3.0, 1211
# (preset, paired repeats): WavLM Base and Base+ share one architecture; Large steps take about 3x longer.
ARCHITECTURES = (("wavlm_base_plus", 5), ("hubert_base", 5), ("wav2vec2_base", 5),
                 ("wavlm_large", 3), ("hubert_large", 3), ("wav2vec2_large", 3))


def _timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _cases(preset: str) -> dict[str, Callable[[], None]]:
    """Closures that each run one step; built once so that model construction is not timed."""
    cfg = SSLConfig(preset=preset, layerdrop=0.0)       # the bare baseline never drops layers either
    student, teacher = build_student(cfg), build_teacher(cfg)
    bare = build_teacher(cfg).backbone         # the plain HF model with the same weights/config
    bare.requires_grad_(True)
    head = WarmupHead(student.num_hidden_states, student.hidden_size)
    ecapa = EcapaTdnn(student.num_hidden_states, student.hidden_size)
    hint, eapn, aam = HintLoss(0.1), EAPNLoss(), AAMSoftmax(192, NUM_CLASSES)
    samples = int(SECONDS * 16000)
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2 * SPEAKERS, samples, generator=g)
    noisy = torch.cat([clean[:SPEAKERS], clean[SPEAKERS:] + 0.1 * torch.randn(SPEAKERS, samples, generator=g)])
    labels = torch.randint(0, NUM_CLASSES, (2 * SPEAKERS,), generator=g)
    mask_rng = torch.Generator().manual_seed(1)

    def bare_forward() -> None:
        bare.eval()
        with torch.no_grad():
            bare(noisy)

    def bare_forward_backward() -> None:
        bare.train()
        bare.zero_grad(set_to_none=True)
        bare(noisy).last_hidden_state.sum().backward()

    def extract() -> None:
        student.eval()
        with torch.no_grad():
            student(noisy)

    def warmup_step() -> None:
        student.train()
        head.train()
        for module in (student, head, eapn):
            module.zero_grad(set_to_none=True)
        s = student(noisy, mask=True, generator=mask_rng)
        t = teacher(clean)
        e_s, e_t = head(s), head(t)
        loss = hint(s, t) + 0.1 * eapn(e_s[SPEAKERS:], [e_s[:SPEAKERS], e_t[:SPEAKERS], e_t[SPEAKERS:]])
        loss.backward()

    def finetune_frozen() -> None:
        student.eval()
        ecapa.train()
        ecapa.zero_grad(set_to_none=True)
        aam.zero_grad(set_to_none=True)
        with torch.no_grad():
            states = student(noisy)
        aam(ecapa(states), labels)[0].backward()

    def finetune_joint() -> None:
        student.train()
        ecapa.train()
        for module in (student, ecapa, aam):
            module.zero_grad(set_to_none=True)
        aam(ecapa(student(noisy, mask=True, generator=mask_rng)), labels)[0].backward()

    return {"bare_fwd": bare_forward, "bare_fwd_bwd": bare_forward_backward, "extract": extract,
            "warmup": warmup_step, "finetune_frozen": finetune_frozen, "finetune_joint": finetune_joint}


# (case, baseline it is divided by, target, what the case runs)
_PAIRS = (
    ("extract", "bare_fwd", "<= 1.15x", "extraction / bare forward", "student forward, all hidden states"),
    ("warmup", "bare_fwd_bwd", "<= 1.5x", "warm-up step / bare fwd+bwd",
     "student fwd+bwd + teacher fwd + hint + head x2 + E-APN"),
    ("finetune_frozen", "bare_fwd", "", "fine-tune frozen SSL / bare forward",
     "student fwd (no grad) + ECAPA + AAM fwd+bwd"),
    ("finetune_joint", "bare_fwd_bwd", "", "fine-tune joint / bare fwd+bwd", "student fwd+bwd + ECAPA + AAM"),
)


def _measure(preset: str, repeats: int) -> list[Figure]:
    cases = _cases(preset)
    for step in cases.values():
        step()                                           # warm-up run (allocator, first-call overheads)
    times: dict[str, list[float]] = {name: [] for name in cases}
    ratios: dict[str, list[float]] = {case: [] for case, *_ in _PAIRS}
    for _ in range(repeats):
        for case, baseline, *_ in _PAIRS:
            base_time, case_time = _timed(cases[baseline]), _timed(cases[case])
            times[baseline].append(base_time)
            times[case].append(case_time)
            ratios[case].append(case_time / base_time)
    best = {name: min(values) for name, values in times.items()}
    label = f"{preset} ({2 * SPEAKERS}x{SECONDS:g}s)"
    figures = [Figure(f"{label} bare HF model {what}", best[name], "s",
                      note=f"min of {len(times[name])}; median {statistics.median(times[name]):.3f} s")
               for name, what in (("bare_fwd", "forward"), ("bare_fwd_bwd", "forward+backward"))]
    for case, _, target, title, what in _PAIRS:
        spread = f"{min(ratios[case]):.2f}-{max(ratios[case]):.2f}"
        figures.append(Figure(f"{label} {title}", statistics.median(ratios[case]), "x", target=target,
                              note=f"median of {repeats} paired ratios, range {spread}; {best[case]:.3f} s; {what}"))
    return figures


def run(args: argparse.Namespace) -> list[Figure]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        figures = _measure("tiny", 3 if args.quick else 9) + frozen_cnn_figures("tiny", 3 if args.quick else 9)
        for preset, repeats in () if args.quick else ARCHITECTURES:
            figures += _measure(preset, repeats)
        if not args.quick:
            figures += frozen_cnn_figures("wavlm_base_plus", 3)
        return figures
    finally:
        torch.set_num_threads(threads)
