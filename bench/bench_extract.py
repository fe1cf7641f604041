"""Stage-5 extraction speed: real-time factor and overhead against a bare transformers ``WavLMModel`` forward.

CPU, 2 threads, random-init models (speed does not depend on the weights): the tiny preset with a small ECAPA
(C=128, 64-d, as egs/mini) and the WavLM Base+ architecture with the paper's ECAPA (C=512, 192-d), on a handful
of 6-8 s utterances (Base+: two, 6 s and 8 s). Two modes, as stage 5 runs them:

- whole: one forward pass per utterance (batch 1, every length different);
- segments: the 5 x 3 s windows of an utterance as one batch (stage 5 batches up to 32 across utterances).

For each utterance three paths run on the same audio, round robin, and each path's minimum over the repeats is
kept (the CPU is shared with other jobs; the minimum is the stable estimate), then summed over utterances:
``bare`` = ``WavLMModel(wav)`` on the same tensors (the floor transformers sets); ``ssl`` = our path from numpy
utterances (window cutting, batching, hidden-state collection of all layers) with the SSL encoder only;
``full`` = the complete stage-5 path (SSL + ECAPA back-end). RTF = compute seconds / audio seconds.
The DESIGN target (extraction <= 1.15x bare) is reported for ``full`` and, to separate the back-end's own
cost from pipeline overhead, for ``ssl``.
"""
from __future__ import annotations

import argparse
import functools
import time
from typing import Callable

import numpy as np
import torch

from bench.common import Figure
from nawsv.extract.config import ExtractConfig
from nawsv.extract.embedder import Embedder
from nawsv.extract.segments import cut_segments
from nawsv.models.config import SSLConfig
from nawsv.models.registry import build_backend
from nawsv.models.speaker import SpeakerEmbedder
from nawsv.models.ssl import build_student, build_teacher

SR = 16000
BASE_SECONDS = (6.0, 8.0)
THREADS = 2                       # torch intra-op threads (args.threads overrides)
TINY_SECONDS = (6.0, 6.6, 7.3, 8.0, 6.2, 7.7)


class _SslOnly(torch.nn.Module):
    """The SSL encoder with a free reduction to [B, H], so the Embedder path can run without a back-end."""

    def __init__(self, ssl: torch.nn.Module) -> None:
        super().__init__()
        self.ssl = ssl

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.ssl(wav)[:, -1, 0]


def _timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _measure(preset: str, channels: int, embed_dim: int, seconds: tuple[float, ...], segment_utts: int,
             repeats: int) -> list[Figure]:
    cfg = SSLConfig(preset=preset)
    ssl = build_student(cfg).eval()
    backend = build_backend("ecapa_tdnn_small", num_hidden_states=ssl.num_hidden_states, input_dim=ssl.hidden_size,
                            channels=channels, embed_dim=embed_dim)
    model = SpeakerEmbedder(ssl, backend, embed_dim).eval()
    bare = build_teacher(cfg).backbone.eval()          # plain HF model, same config
    rng = np.random.default_rng(0)
    utterances = [(0.1 * rng.standard_normal(round(s * SR))).astype(np.float32) for s in seconds]
    options = ExtractConfig()
    seg, cap = options.segments, options.whole.max_samples
    device = torch.device("cpu")
    full, ssl_only = Embedder(model, device), Embedder(_SslOnly(ssl), device)

    def bare_forward(wav: np.ndarray) -> None:
        with torch.inference_mode():
            bare(torch.from_numpy(wav))

    # per item: (audio seconds, {path: step}); items are interleaved path by path, the minimum kept per item
    items = {"whole": [(u.size / SR, {"bare": functools.partial(bare_forward, u[None]),
                                      "ssl": functools.partial(ssl_only.whole, [u], cap, 1),
                                      "full": functools.partial(full.whole, [u], cap, 1)})
                       for u in utterances],
             "segments": [(seg.num * seg.seconds,
                           {"bare": functools.partial(bare_forward, cut_segments(u, seg.samples, seg.num)),
                            "ssl": functools.partial(ssl_only.segments, [u], seg.samples, seg.num, seg.batch_size),
                            "full": functools.partial(full.segments, [u], seg.samples, seg.num, seg.batch_size)})
                          for u in utterances[:segment_utts]]}
    for path in (bare_forward, ssl_only.forward, full.forward):
        path(utterances[0][None, :SR])                  # warm-up (allocator, first-call overheads)
    figures = []
    for mode, work in items.items():
        best = {name: 0.0 for name in ("bare", "ssl", "full")}
        for _, steps in work:
            times: dict[str, list[float]] = {name: [] for name in steps}
            for _ in range(repeats):                  # round robin: a busy spell on the CPU hits every path
                for name, step in steps.items():
                    times[name].append(_timed(step))
            for name in best:
                best[name] += min(times[name])
        audio_seconds = sum(a for a, _ in work)
        label = f"{preset} {mode} ({len(work)} utts, {audio_seconds:.1f} s audio)"
        for name in ("bare", "full"):
            figures.append(Figure(f"{label} RTF {name}", best[name] / audio_seconds, "s/s",
                                  note=f"sum over utts of the min of {repeats}; {best[name]:.3f} s"))
        figures.append(Figure(f"{label} full extraction / bare", best["full"] / best["bare"], "x", target="<= 1.15x",
                              note="SSL + ECAPA back-end + windowing vs bare WavLMModel"))
        figures.append(Figure(f"{label} SSL path only / bare", best["ssl"] / best["bare"], "x", target="<= 1.15x",
                              note="windowing, all hidden states, numpy out; no back-end"))
    return figures


def run(args: argparse.Namespace) -> list[Figure]:
    threads = torch.get_num_threads()
    torch.set_num_threads(getattr(args, "threads", THREADS))
    try:
        figures = _measure("tiny", 128, 64, TINY_SECONDS, len(TINY_SECONDS), 3 if args.quick else 9)
        if not args.quick:
            figures += _measure("wavlm_base_plus", 512, 192, BASE_SECONDS, 2, 5)
        return figures
    finally:
        torch.set_num_threads(threads)
