"""Real-size cost: stage 1, the training store and its DataLoader workers at VoxCeleb2 size, stage 5/6 at Vox1-H.

Workload: a VoxCeleb2-dev-size tree (1,092,009 utterances of 5,994 speakers, about 7 per video) of hard links to
eight short synthetic wavs (and copies of them: a file takes at most 65,000 links), built in a temporary folder
under /tmp (about a minute; hard links cost inodes, not disk). ``--fraction F`` scales every size (``--quick``:
0.01). Parts (``python -m bench scale:store`` etc.):

- stage1: ``prepare_data speakers`` (raw lists, the shared default) on 10 % and 100 % of the tree, each in a
  fresh process: wall time and the main process's peak RSS, and the 100 %/10 % ratios (linear growth is 10x).
- store: ``UtteranceStore.from_data_dir`` on the stage-1 output, in fresh processes: the first open (parses the
  lists, writes the index) and a later one (loads the index), time and resident memory added by the store;
  then the warm-up pair plan of one epoch (96 speakers per batch, 500 utterances per speaker): time, batches and
  the memory of the plan.
- workers: one epoch of that plan walked by 8 DataLoader workers (forked, as in training) through an item that
  touches what a training item touches in the store (key, label, length, audio path) but decodes no audio; the
  private memory (``Private_*`` of /proc/<pid>/smaps_rollup) of every worker after its first batch and after the
  last batch. A store of Python objects grows here (reference counts copy the pages an item touches).
- scoring: stage 5's output side and stage 6 at Vox1-H size (1,910 speakers x 76 = 145,160 utterances,
  550,894 trials), the clean set plus 15 noisy cells. Stage 5 is not run with a model: the figure is the
  ark/scp writing of 16 synthetic 192-d embedding sets (what stage 5 writes; the model's cost is
  ``bench extract``). Stage 6 (``nawsv.bin.score``, cosine on every cell) runs in fresh processes without and
  with bootstrap intervals (1,000 speaker resamples): time, peak RSS and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):                        # run as a file by its own children (see _child); PYTHONPATH
    sys.path.append(str(Path(__file__).resolve().parents[1]))       # still picks the nawsv tree measured

from bench.common import Figure, peak_rss_mb

VOX2_UTTERANCES = 1_092_009
VOX2_SPEAKERS = 5_994
UTTS_PER_VIDEO = 7
VOX1H_SPEAKERS, VOX1H_UTTS, VOX1H_TRIALS = 1_910, 76, 550_894
NOISY_CELLS = 15
SPEAKERS_PER_BATCH, MAX_UTTS_PER_SPEAKER = 96, 500
WORKERS = 8
LINKS_PER_FILE = 50_000                              # ext4 allows 65,000 hard links to one file
PARTS = ("stage1", "store", "workers", "scoring")


# ---- workloads ----

def _pool(folder: Path, count: int = 8) -> list[Path]:
    from nawsv.data.audio import write_audio
    from nawsv.data.synthetic import Session, Voice, synthesize_utterance
    from nawsv.utils.seeding import rng_for

    paths = []
    for i in range(count):
        rng = rng_for("bench-scale-pool", i)
        paths.append(folder / f"{i}.wav")
        write_audio(paths[-1], synthesize_utterance(Voice.sample(rng), Session.sample(rng), 1.0 + i / 4, rng))
    return paths


def _link_source(pool: list[Path], made: int) -> Path:
    """The pool file (or a copy of it: a file takes at most ``LINKS_PER_FILE`` hard links) for link ``made``."""
    which = made % len(pool)
    generation = made // (len(pool) * LINKS_PER_FILE)
    if generation == 0:
        return pool[which]
    copy = pool[which].with_name(f"{pool[which].stem}_{generation}.wav")
    if not copy.exists():
        shutil.copyfile(pool[which], copy)
    return copy


def build_tree(root: Path, utterances: int, speakers: int, pool: list[Path]) -> Path:
    """``root/<speaker>/<video>/<utt>.wav`` hard links, ``utterances`` spread evenly over ``speakers``."""
    per_speaker, extra = divmod(utterances, speakers)
    made = 0
    for s in range(speakers):
        for u in range(per_speaker + (s < extra)):
            video = root / f"id{10000 + s:05d}" / f"video{u // UTTS_PER_VIDEO:06d}"
            if u % UTTS_PER_VIDEO == 0:
                video.mkdir(parents=True)
            os.link(_link_source(pool, made), video / f"{u % UTTS_PER_VIDEO:05d}.wav")
            made += 1
    return root


# ---- measurements, each in a fresh process (its own peak RSS; a forked parent's memory would count) ----

def _memory_kb(pid: int | str = "self") -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0])
    return fields


def private_mb(pid: int | str = "self") -> float:
    """Memory only this process holds (its copies of shared pages included): the Private_* fields."""
    fields = _memory_kb(pid)
    return sum(v for k, v in fields.items() if k.startswith("Private_")) / 1024


def _rss_mb() -> float:
    return _memory_kb()["Rss"] / 1024


def _child_stage1(wav_root: str, out: str, nj: int) -> dict:
    from nawsv.data.prepare import PrepareConfig, prepare_speaker_set

    start = time.perf_counter()
    prepare_speaker_set(wav_root, out, PrepareConfig(nj=nj))
    return {"s": time.perf_counter() - start, "peak_mb": peak_rss_mb()}


def _child_open(data_dir: str) -> dict:
    from nawsv.data.store import UtteranceStore

    before = _rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    store = UtteranceStore.from_data_dir(data_dir)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"s": seconds, "cpu_s": cpu, "rss_mb": _rss_mb() - before, "peak_mb": peak_rss_mb(),
            "utterances": len(store)}


def _child_plan(data_dir: str) -> dict:
    import tracemalloc

    from nawsv.data.samplers import speaker_pair_batches
    from nawsv.data.store import UtteranceStore

    labels = UtteranceStore.from_data_dir(data_dir).labels
    start = time.perf_counter()
    plan = speaker_pair_batches(labels, _batch(labels), MAX_UTTS_PER_SPEAKER, 0, 0)
    seconds = time.perf_counter() - start
    del plan
    tracemalloc.start()
    plan = speaker_pair_batches(labels, _batch(labels), MAX_UTTS_PER_SPEAKER, 0, 1)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"s": seconds, "batches": len(plan), "pairs": sum(map(len, plan)), "mb": size / 2**20}


def _batch(labels: np.ndarray) -> int:
    """96 speakers per warm-up batch, fewer for a small fraction of the speakers."""
    return min(SPEAKERS_PER_BATCH, (int(labels.max()) + 1) // 2)


class _MetadataItem:
    """A warm-up item without the audio: what ``read_crop`` looks up in the store for both utterances."""

    def __init__(self, store) -> None:
        self.store = store
        self.location = getattr(store, "location", None)

    def __getitem__(self, index: tuple[int, int, int, int]):
        import torch

        _, _, first, second = index
        touched = 0
        for utt in (first, second):
            touched += len(self.store.keys[utt]) + int(self.store.labels[utt]) + self.store.num_samples(utt)
            if self.location is not None:
                touched += len(self.location(utt))
        return torch.tensor([os.getpid(), touched], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.store)


def _child_workers(data_dir: str, workers: int, max_batches: int | None = None) -> dict:
    from torch.utils.data import DataLoader

    from nawsv.data.samplers import speaker_pair_batches
    from nawsv.data.store import UtteranceStore

    store = UtteranceStore.from_data_dir(data_dir)
    plan = speaker_pair_batches(store.labels, _batch(store.labels), MAX_UTTS_PER_SPEAKER, 0, 0)
    batches = [[(0, step * len(batch) + i, u1, u2) for i, (u1, u2) in enumerate(batch)]
               for step, batch in enumerate(plan[:max_batches])]
    del plan
    loader = DataLoader(_MetadataItem(store), batch_sampler=batches, num_workers=workers)
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    items = 0
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        items += len(batch)
        for pid in {int(p) for p in batch[:, 0]} - set(first):
            first[pid] = private_mb(pid)
        if step == len(batches) - 1:                 # workers are still alive until the next request
            last = {pid: private_mb(pid) for pid in first}
    seconds = time.perf_counter() - start
    growth = [last[pid] - first[pid] for pid in first]
    return {"s": seconds, "items": items, "workers": len(first), "first_mb": max(first.values()),
            "last_mb": max(last.values()), "growth_max_mb": max(growth), "growth_mean_mb": float(np.mean(growth))}


def _child_score(exp: str, data: str, resamples: int) -> dict:
    from nawsv.bin.score import main

    start = time.perf_counter()
    status = main(["--exp_dir", exp, "--data_dir", data, "--test_set", "vox1_H", "--override", "methods=[cosine]",
                   "--override", "clean_method=cosine", "--override", "noisy_method=cosine", "--override",
                   f"bootstrap.resamples={resamples}"])
    if status:
        raise RuntimeError(f"stage 6 exited with {status}")
    return {"s": time.perf_counter() - start, "peak_mb": peak_rss_mb()}


CHILDREN = {"stage1": _child_stage1, "open": _child_open, "plan": _child_plan, "workers": _child_workers,
            "score": _child_score}


def _in_child(kind: str, *args) -> dict:
    """Run ``CHILDREN[kind](*args)`` in a fresh interpreter (this file run as a script) and return its figures."""
    proc = subprocess.run([sys.executable, __file__, kind, json.dumps(args)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"bench child {kind} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- parts ----

def _stage1(tmp: Path, fraction: float, pool: list[Path], nj: int) -> list[Figure]:
    figures, results = [], {}
    for share in (0.1, 1.0):
        utterances = round(VOX2_UTTERANCES * fraction * share)
        speakers = max(2, round(VOX2_SPEAKERS * fraction * share))
        tree = tmp / f"wav_{share}"
        if share == 1.0 and (tmp / "wav").exists():
            tree = tmp / "wav"
        elif not tree.exists():
            build_tree(tree, utterances, speakers, pool)
        results[share] = _in_child("stage1", str(tree), str(tmp / f"prepared_{share}"), nj)
        label = f"stage 1, {utterances:,} utterances ({share:.0%}), raw lists, nj={nj}"
        figures.append(Figure(f"{label}: time", results[share]["s"], "s"))
        figures.append(Figure(f"{label}: peak RSS", results[share]["peak_mb"], "MB"))
    figures.append(Figure("stage 1 growth 10 % -> 100 %: time", results[1.0]["s"] / results[0.1]["s"], "x",
                          target="10x (linear)"))
    figures.append(Figure("stage 1 growth 10 % -> 100 %: peak RSS", results[1.0]["peak_mb"] / results[0.1]["peak_mb"],
                          "x", target="<= 10x"))
    return figures


def _store(data_dir: Path) -> list[Figure]:
    index = data_dir / "raw.list.index.npz"
    index.unlink(missing_ok=True)
    cold = _in_child("open", str(data_dir))
    warm = _in_child("open", str(data_dir))
    plan = _in_child("plan", str(data_dir))
    n = f"{cold['utterances']:,} utterances"
    return [Figure(f"store open, first (parse lists, write index), {n}", cold["s"], "s"),
            Figure("store open, first: resident memory added", cold["rss_mb"], "MB"),
            Figure(f"store open, later (index), {n}", warm["s"], "s", target="<= 3 s"),
            Figure("store open, later: CPU time", warm["cpu_s"], "s"),
            Figure("store open, later: resident memory added", warm["rss_mb"], "MB", target="<= 100 MB"),
            Figure(f"warm-up pair plan per epoch ({plan['batches']:,} batches, {plan['pairs']:,} pairs)", plan["s"],
                   "s"),
            Figure("warm-up pair plan per epoch: memory", plan["mb"], "MB")]


def _workers(data_dir: Path, workers: int) -> list[Figure]:
    walk = _in_child("workers", str(data_dir), workers)
    label = f"{workers} workers, one epoch ({walk['items']:,} items, no decoding)"
    return [Figure(f"{label}: time", walk["s"], "s"),
            Figure("worker private memory after the first batch (max)", walk["first_mb"], "MB"),
            Figure("worker private memory after the last batch (max)", walk["last_mb"], "MB"),
            Figure("worker private memory growth over the epoch (max)", walk["growth_max_mb"], "MB",
                   target="flat (a few MB)")]


def _scoring(tmp: Path, fraction: float) -> list[Figure]:
    from nawsv.formats.kaldi import write_trials
    from nawsv.extract.arkio import write_ark_scp
    from nawsv.scoring.synthetic import corrupted, random_trials, speaker_structured_set, write_utt2spk
    from nawsv.utils.seeding import rng_for

    rng = rng_for("bench-scale", "vox1-h")
    speakers = max(4, round(VOX1H_SPEAKERS * fraction))
    trials = max(100, round(VOX1H_TRIALS * fraction))
    clean = speaker_structured_set(rng, speakers, VOX1H_UTTS, dim=192, within=1.5)
    exp, data = tmp / "exp", tmp / "data"
    write_trials(data / "vox1_H" / "trials" / "vox1_H", random_trials(rng, clean, VOX1H_UTTS, trials))
    write_utt2spk(data / "vox1_H", clean)
    cells = [f"{category}_{snr}" for snr in (0, 5, 10, 15, 20) for category in ("noise", "music", "babble")]
    written = 0.0
    for number, name in enumerate(["vox1_H"] + [f"vox1_H_{cell}" for cell in cells[:NOISY_CELLS]]):
        embeddings = corrupted(rng, clean, 0.1 * number) if number else clean
        folder = exp / "embeddings" / name
        start = time.perf_counter()
        write_ark_scp(folder / "xvector.ark", folder / "xvector.scp", zip(embeddings.keys, embeddings.vectors))
        written += time.perf_counter() - start
    sets = NOISY_CELLS + 1
    plain = _in_child("score", str(exp), str(data), 0)
    intervals = _in_child("score", str(exp), str(data), 1000)
    size = f"{len(clean.keys):,} utts x {sets} sets, {trials:,} trials"
    return [Figure(f"stage 5 output: ark/scp of {sets} sets of {len(clean.keys):,} 192-d embeddings", written,
                   "s", note="synthetic embeddings, no model"),
            Figure(f"stage 6 cosine, {size}, no intervals", plain["s"], "s"),
            Figure("stage 6 peak RSS, no intervals", plain["peak_mb"], "MB"),
            Figure("stage 6 with 95 % intervals (1,000 speaker resamples)", intervals["s"], "s"),
            Figure("stage 6 time with intervals / without", intervals["s"] / plain["s"], "x", target="<= 2x"),
            Figure("stage 6 peak RSS, with intervals", intervals["peak_mb"], "MB")]


def run(args: argparse.Namespace, parts: tuple[str, ...] = PARTS) -> list[Figure]:
    fraction = 0.01 if args.quick else getattr(args, "fraction", None) or 1.0
    nj = min(4, os.cpu_count() or 1)
    figures = [Figure("fraction of VoxCeleb2 / Vox1-H size", fraction, "x")]
    with tempfile.TemporaryDirectory(prefix="nawsv-bench-scale-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        if {"stage1", "store", "workers"} & set(parts):
            pool = _pool(tmp / "pool")
            start = time.perf_counter()
            utterances = round(VOX2_UTTERANCES * fraction)
            build_tree(tmp / "wav", utterances, max(2, round(VOX2_SPEAKERS * fraction)), pool)
            figures.append(Figure(f"hard-link tree of {utterances:,} utterances: build", time.perf_counter() - start,
                                  "s"))
            if "stage1" in parts:
                figures += _stage1(tmp, fraction, pool, nj)
            data_dir = tmp / "prepared_1.0"
            if not data_dir.exists():
                _in_child("stage1", str(tmp / "wav"), str(data_dir), nj)
            if "store" in parts:
                figures += _store(data_dir)
            if "workers" in parts:
                figures += _workers(data_dir, WORKERS)
        if "scoring" in parts:
            figures += _scoring(tmp, fraction)
    return figures


def _child(kind: str, arguments: str) -> None:
    print(json.dumps(CHILDREN[kind](*json.loads(arguments))), flush=True)


if __name__ == "__main__":
    _child(*sys.argv[1:])
