"""Stage-1 throughput: utterances/s for wav.scp + utt2dur (header probing) and for shard writing.

Workloads: the mini corpus (320 utterances) and a generated 20k-utterance corpus in the VoxCeleb
layout (a pool of synthetic utterances hard-linked to 20k paths, so that every file is read for real).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bench.common import Figure, timer
from nawsv.data.prepare import PrepareConfig, prepare_speaker_set
from nawsv.data.synthetic import MiniCorpusSpec, Session, Voice, make_mini_corpus, synthesize_utterance
from nawsv.data.audio import write_audio
from nawsv.utils.seeding import rng_for


def _big_tree(root: Path, utterances: int, pool: int = 200) -> Path:
    pool_dir = root / "pool"
    sources = []
    for i in range(pool):
        rng = rng_for("bench-pool", i)
        path = pool_dir / f"{i}.wav"
        write_audio(path, synthesize_utterance(Voice.sample(rng), Session.sample(rng), rng.uniform(1.0, 3.0), rng))
        sources.append(path)
    wav_root = root / "wav"
    per_speaker = 40
    for i in range(utterances):
        target = wav_root / f"id{10000 + i // per_speaker}" / f"video{i % 4:07d}" / f"{i % per_speaker:05d}.wav"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(sources[i % pool], target)
    return wav_root


def _measure(label: str, wav_root: Path, out: Path, count: int, nj: int) -> list[Figure]:
    figures = []
    with timer() as t:
        prepare_speaker_set(wav_root, out / "lists", PrepareConfig(nj=nj, shards=False))
    figures.append(Figure(f"stage 1 {label}: wav.scp+utt2dur+raw.list (nj={nj})", count / t["s"], "utt/s"))
    with timer() as t:
        prepare_speaker_set(wav_root, out / "shards", PrepareConfig(nj=nj, shards=True, shard_size=1000))
    figures.append(Figure(f"stage 1 {label}: ... + tar shards (nj={nj})", count / t["s"], "utt/s"))
    return figures


def run(args: argparse.Namespace) -> list[Figure]:
    figures = []
    utterances = 2000 if args.quick else 20000
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = MiniCorpusSpec()
        corpus = make_mini_corpus(tmp / "mini", spec)
        count = spec.dev_speakers * spec.dev_utts_per_speaker
        figures += _measure("mini corpus", corpus["voxceleb"] / "dev" / "wav", tmp / "mini_out", count, 2)
        wav_root = _big_tree(tmp / "big", utterances)
        figures += _measure(f"{utterances // 1000}k utterances", wav_root, tmp / "big_out", utterances, 2)
    return figures
