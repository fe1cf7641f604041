"""GPU readiness: per backbone, warm-up and fine-tune samples/s in fp32 and bf16, peak memory, loader headroom.

One command, ``python -m bench gpu`` (under 5 minutes on one GPU): for the Base and Large architectures of
WavLM, HuBERT and wav2vec 2.0 (random init: speed does not depend on the weights), the stage-3 and stage-4 tasks'
own training steps (forward, losses, backward, Adam) on pre-loaded batches of 3-s crops, in fp32 and under bf16
autocast as the trainer runs them, with the peak GPU memory of each case. The loader headroom is what one
data-loading worker of this machine delivers (crops/s, as the training datasets read and augment them) divided
by what the GPU consumes; ``data.num_workers`` workers deliver that many times more. DESIGN §9 targets: bf16 >=
2x fp32 samples/s for the warm-up, loader headroom >= 10x. On a machine without CUDA it stops and says so.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_train import _loader_rate, _workload
from bench.common import Figure, Unavailable
from nawsv.data.augment import Augmenter
from nawsv.data.train_sets import AugmentedCrops, WarmupPairs
from nawsv.train.distributed import DistContext
from nawsv.train.finetune import FinetuneConfig, FinetuneTask
from nawsv.train.warmup import WarmupConfig, WarmupTask
from nawsv.utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ("wavlm_base_plus", "hubert_base", "wav2vec2_base", "wavlm_large", "hubert_large", "wav2vec2_large")
WARMUP_SPEAKERS = 12          # per step: 12 speakers x 2 utterances (the workload has 24 speakers)
FINETUNE_BATCH = 24           # the paper's batch
STEPS = 4                     # timed steps per case, after one untimed step
BUDGET_S = 270.0              # backbones left when this is spent are reported as not measured


def _rate(task, epoch: int, bf16: bool, device: torch.device) -> tuple[float, float]:
    """(samples/s, peak GiB) of STEPS full training steps, data pre-loaded on the GPU."""
    task.configure_epoch(epoch)
    params = [p for m in task.modules().values() for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-5)
    batches = []
    for batch in task.batches(epoch, 0):
        batches.append([t.to(device) for t in batch])
        if len(batches) == STEPS + 1:
            break
    generator = torch.Generator(device=device).manual_seed(0)
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step(batch) -> None:
        with precision:
            loss, _ = task.training_step(batch, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return len(batches[1:]) * task.samples_per_step() / seconds, torch.cuda.max_memory_allocated(device) / 2**30


def _loader_rates(store, musan, rirs) -> dict[str, float]:
    """Crops/s of one data-loading worker on this machine's CPU (warm-up items, fine-tune crops)."""
    warm_cfg, fine_cfg = WarmupConfig(), FinetuneConfig()
    crop = int(3.0 * 16000)
    pairs = WarmupPairs(store, Augmenter(warm_cfg.augment, musan, None), crop, 1)
    crops = AugmentedCrops(store, Augmenter(fine_cfg.augment, musan, rirs), 1)
    items = [(0, i, 2 * i % len(store), (2 * i + 1) % len(store)) for i in range(40)]
    return {"warmup": _loader_rate(pairs, items, 2),
            "finetune": _loader_rate(crops, [(0, i, i % len(store), crop) for i in range(60)], 1)}


def _measure(backbone: str, store, musan, rirs, ctx: DistContext, loader: dict[str, float]) -> list[Figure]:
    overrides = [f"ssl.preset={backbone}", "data.num_workers=0"]
    warm_cfg = load_config(WarmupConfig, ROOT / "conf/warmup.yaml",
                           [*overrides, f"data.speakers_per_batch={WARMUP_SPEAKERS}"])
    fine_cfg = load_config(FinetuneConfig, ROOT / "conf/finetune.yaml",
                           [*overrides, f"data.batch_size={FINETUNE_BATCH}"])
    # (phase, task builder, epoch measured, label): the whole student warms up; fine-tuning is joint
    phases = (("warmup", lambda: WarmupTask(warm_cfg, store, Augmenter(warm_cfg.augment, musan, None), ctx),
               warm_cfg.adapter_only_epochs, f"warm-up, whole student, {2 * WARMUP_SPEAKERS} utts"),
              ("finetune", lambda: FinetuneTask(fine_cfg, store, Augmenter(fine_cfg.augment, musan, rirs), ctx, None),
               fine_cfg.frozen_ssl_epochs, f"fine-tune, joint, batch {FINETUNE_BATCH}"))
    figures: list[Figure] = []
    rates: dict[tuple[str, bool], float] = {}
    torch.manual_seed(0)
    for phase, build, epoch, label in phases:
        task = build()
        for bf16 in (False, True):
            rate, peak = _rate(task, epoch, bf16, ctx.device)
            rates[phase, bf16] = rate
            figures.append(Figure(f"{backbone} {label}, {'bf16' if bf16 else 'fp32'}", rate, "samples/s",
                                  note=f"peak GPU memory {peak:.1f} GiB"))
        figures.append(Figure(f"  loader headroom, {phase}, one worker", loader[phase], "crops/s",
                              reference=max(rates[phase, False], rates[phase, True]), target=">= 10x with all workers",
                              note="ratio = one worker / fastest GPU rate"))
        del task
        torch.cuda.empty_cache()
    figures.append(Figure(f"{backbone} warm-up bf16 / fp32", rates["warmup", True] / rates["warmup", False], "x",
                          target=">= 2x"))
    return figures


def run(args: argparse.Namespace) -> list[Figure]:
    if not torch.cuda.is_available():
        raise Unavailable("this benchmark needs a CUDA GPU (torch.cuda.is_available() is False on this machine); "
                          "run `python -m bench gpu` where one is")
    ctx = DistContext(device=torch.device("cuda", 0))
    backbones = BACKBONES[:1] + BACKBONES[3:4] if args.quick else BACKBONES
    figures = [Figure(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", 0.0, "")]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store, musan, rirs = _workload(Path(tmp))
        loader = _loader_rates(store, musan, rirs)
        for backbone in backbones:
            if time.perf_counter() - start > BUDGET_S:
                figures.append(Figure(f"{backbone}: not measured (time budget of {BUDGET_S:g} s spent)", 0.0, ""))
                continue
            figures += _measure(backbone, store, musan, rirs, ctx, loader)
    figures.append(Figure("total wall time", time.perf_counter() - start, "s", target="< 300 s"))
    return figures
