"""Training throughput on CPU (stages 3-4) and whether data loading keeps up (DESIGN §9).

- samples/s of full training steps (the tasks' own forward, loss, backward and Adam step, batches
  pre-loaded) for the mini configuration (tiny random-init WavLM, egs/mini/conf) and for the WavLM
  Base+ architecture (random init, the paper's head/back-end sizes, a small batch);
- crops/s of one data-loading worker: reading random crops and augmenting them exactly as the training
  datasets do (warm-up: 2 crops + noise on one of them per item; fine-tune: 1 crop, p = 0.6 augmentation);
- the ratio of one worker's rate to what the model consumes (target: >= 10x, so loading never limits).
The workload is built here: a synthetic corpus in the VoxCeleb/MUSAN layout, prepared by stage 1.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.common import Figure
from nawsv.data.augment import Augmenter
from nawsv.data.noise_bank import NoiseBank
from nawsv.data.prepare import PrepareConfig, prepare_flat_bank, prepare_musan, prepare_speaker_set
from nawsv.data.store import UtteranceStore
from nawsv.data.synthetic import MiniCorpusSpec, make_mini_corpus
from nawsv.train.distributed import DistContext
from nawsv.train.finetune import FinetuneConfig, FinetuneTask
from nawsv.train.warmup import WarmupConfig, WarmupTask
from nawsv.utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _workload(root: Path) -> tuple[UtteranceStore, NoiseBank, NoiseBank]:
    spec = MiniCorpusSpec(dev_speakers=24, dev_utts_per_speaker=6, test_speakers=2, test_utts_per_speaker=2)
    corpus = make_mini_corpus(root / "corpus", spec)
    cfg = PrepareConfig(nj=1, shards=False)
    prepare_speaker_set(corpus["voxceleb"] / "dev" / "wav", root / "dev", cfg)
    prepare_musan(corpus["musan"], root, cfg)
    prepare_flat_bank(corpus["rirs"], root / "rirs", "rir", cfg)
    return (UtteranceStore.from_data_dir(root / "dev"), NoiseBank.from_dir(root / "musan_train"),
            NoiseBank.from_dir(root / "rirs"))


def _step_rate(task, epoch: int, steps: int) -> float:
    """Training samples/s of ``steps`` full steps (after one untimed step), data pre-loaded."""
    task.configure_epoch(epoch)
    params = [p for m in task.modules().values() for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-5)
    batches = []
    for batch in task.batches(epoch, 0):
        batches.append(batch)
        if len(batches) == steps + 1:
            break
    generator = torch.Generator().manual_seed(0)

    def step(batch) -> None:
        loss, _ = task.training_step(batch, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])
    start = time.perf_counter()
    for batch in batches[1:]:
        step(batch)
    return steps * task.samples_per_step() / (time.perf_counter() - start)


def _loader_rate(dataset, items: list, crops_per_item: int) -> float:
    dataset[items[0]]
    start = time.perf_counter()
    for item in items[1:]:
        dataset[item]
    return (len(items) - 1) * crops_per_item / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> list[Figure]:
    torch.set_num_threads(2)
    ctx = DistContext()
    figures: list[Figure] = []
    steps = 2 if args.quick else 4
    with tempfile.TemporaryDirectory() as tmp:
        store, musan, rirs = _workload(Path(tmp))
        mini_warm = load_config(WarmupConfig, ROOT / "egs/mini/conf/warmup.yaml", ["data.num_workers=0"])
        mini_fine = load_config(FinetuneConfig, ROOT / "egs/mini/conf/finetune.yaml", ["data.num_workers=0"])
        base_warm = load_config(WarmupConfig, ROOT / "conf/warmup.yaml",
                                ["data.speakers_per_batch=2", "data.num_workers=0"])
        base_fine = load_config(FinetuneConfig, ROOT / "conf/finetune.yaml",
                                ["data.batch_size=4", "data.num_workers=0"])
        cases = [("mini", mini_warm, mini_fine, steps),
                 ("Base+ (random init)", base_warm, base_fine, max(1, steps // 2))]
        for label, warm_cfg, fine_cfg, n in cases:
            torch.manual_seed(0)
            warm = WarmupTask(warm_cfg, store, Augmenter(warm_cfg.augment, musan, None), ctx)
            rate = _step_rate(warm, warm_cfg.adapter_only_epochs, n)
            figures.append(Figure(f"warm-up step, {label}, whole student ({warm_cfg.data.speakers_per_batch} spk x 2)",
                                  rate, "samples/s"))
            loader = _loader_rate(warm.dataset, [(0, i, 2 * i % len(store), (2 * i + 1) % len(store))
                                                 for i in range(40)], 2)
            figures.append(Figure(f"  loader, one worker, warm-up items ({warm_cfg.data.crop_seconds:g}-s crops)",
                                  loader, "crops/s", reference=rate, target=">= 10x the model's rate",
                                  note="ratio = loader / model"))
            fine = FinetuneTask(fine_cfg, store, Augmenter(fine_cfg.augment, musan, rirs), ctx, None)
            frozen = _step_rate(fine, 0, n)
            joint = _step_rate(fine, fine_cfg.frozen_ssl_epochs, n)
            figures.append(Figure(f"fine-tune step, {label}, SSL frozen (batch {fine_cfg.data.batch_size})", frozen,
                                  "samples/s"))
            figures.append(Figure(f"fine-tune step, {label}, joint", joint, "samples/s"))
            crop = int(fine_cfg.data.crop_seconds * 16000)
            loader = _loader_rate(fine.dataset, [(0, i, i % len(store), crop) for i in range(60)], 1)
            figures.append(Figure(f"  loader, one worker, fine-tune crops ({fine_cfg.data.crop_seconds:g} s, p=0.6)",
                                  loader, "crops/s", reference=max(frozen, joint), target=">= 10x the model's rate",
                                  note="ratio = loader / fastest model phase"))
    return figures
