"""Noisy test sets and training augmentation throughput, per core (one process; the model on one torch thread).

Workload: synthetic 8-s test utterances; a MUSAN-like bank (10-s noise, music and speech files, so windows
are partial reads) and a Nonspeech-like bank of 3-5-s files (wrap-repeated); synthetic RIRs. Figures:
stage 2 utterance-conditions/s materialised and manifest-only, reading a noisy utterance from files and
mixing it on the fly, each as a cost ratio to reading the clean file; and 3-s training crops/s through
the fine-tune Augmenter, compared with the crops/s a WavLM Base model (random init, the paper's size)
consumes for forward+backward on one core.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.common import Figure, timer
from nawsv.data.audio import load_audio, write_audio
from nawsv.data.augment import AugmentConfig, Augmenter
from nawsv.formats.kaldi import KaldiDir, write_kaldi_dir, write_table
from nawsv.data.noise_bank import NoiseBank
from nawsv.data.noisy_sets import NoisySetConfig, make_noisy_sets
from nawsv.data.sources import open_audio_source
from nawsv.data.synthetic import (Session, Voice, synthesize_music, synthesize_noise, synthesize_nonspeech,
                                  synthesize_rir, synthesize_utterance)
from nawsv.utils.seeding import rng_for

UTT_SECONDS = 8.0
CROP = 48000


def _bank(root: Path, files: dict[str, tuple[np.ndarray, str]]) -> Path:
    paths, cats = {}, {}
    for key, (audio, category) in files.items():
        path = root / "audio" / f"{key}.wav"
        write_audio(path, audio)
        paths[key], cats[key] = str(path), category
    write_table(root / "wav.scp", paths)
    write_table(root / "utt2cat", cats)
    return root


def _workload(root: Path, utterances: int) -> dict[str, Path]:
    files = {}
    for i in range(12):
        rng = rng_for("bench-noisy", i)
        files[f"noise/n{i:03d}"] = (synthesize_noise(10.0, rng), "noise")
        files[f"music/m{i:03d}"] = (synthesize_music(10.0, rng), "music")
        files[f"speech/s{i:03d}"] = (synthesize_utterance(Voice.sample(rng), Session.sample(rng), 10.0, rng), "speech")
    musan = _bank(root / "musan", files)
    nonspeech = _bank(root / "nonspeech", {f"ns{i}": (synthesize_nonspeech(3.0 + i % 3, rng_for("bench-ns", i)),
                                                      "nonspeech") for i in range(10)})
    rirs = _bank(root / "rirs", {f"{room}{i}": (synthesize_rir(rng_for("bench-rir", room, i), room), "rir")
                                 for room in ("smallroom", "mediumroom", "largeroom") for i in range(4)})
    wav_scp, utt2spk = {}, {}
    for i in range(utterances):
        rng = rng_for("bench-utt", i)
        key = f"spk{i % 10:02d}/u{i:05d}.wav"
        path = root / "test" / "wav" / key
        write_audio(path, synthesize_utterance(Voice.sample(rng_for("bench-spk", i % 10)), Session.sample(rng),
                                               UTT_SECONDS, rng))
        wav_scp[key], utt2spk[key] = str(path), key.split("/")[0]
    write_kaldi_dir(root / "test", KaldiDir(wav_scp, utt2spk))
    return {"musan": musan, "nonspeech": nonspeech, "rirs": rirs, "test": root / "test"}


def _per_second(count: int, seconds: float) -> float:
    return count / seconds


def _model_crops_per_second(quick: bool) -> float | None:
    """Forward+backward crops/s of a random-init WavLM Base on one thread (what the trainer consumes)."""
    try:
        import torch
        from transformers import WavLMConfig, WavLMModel
    except ImportError:
        return None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = WavLMModel(WavLMConfig())
    model.train()
    batch = torch.randn(2, CROP)
    model(batch).last_hidden_state.mean().backward()          # warm-up
    reps = 1 if quick else 3
    with timer() as t:
        for _ in range(reps):
            model.zero_grad(set_to_none=True)
            model(batch).last_hidden_state.mean().backward()
    return _per_second(reps * batch.shape[0], t["s"])


def run(args: argparse.Namespace) -> list[Figure]:
    utterances = 12 if args.quick else 60
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = _workload(Path(tmp), utterances)
        clean = open_audio_source(paths["test"])
        keys = clean.keys()
        for key in keys:                                      # page cache warm for every measurement
            clean.load(key)
        with timer() as t:
            for key in keys:
                clean.load(key)
        clean_rate = _per_second(len(keys), t["s"])
        figures.append(Figure("clean read, 8-s utterance", clean_rate, "utt/s"))

        cfg = NoisySetConfig(snrs=[5.0], chunk_size=20)
        conditions = len(cfg.categories) * len(cfg.snrs)
        for materialize in (True, False):
            out = Path(tmp) / ("materialised" if materialize else "manifest")
            with timer() as t:
                dirs = make_noisy_sets(paths["test"], out, cfg, musan=paths["musan"], nonspeech=paths["nonspeech"],
                                       materialize=materialize, nj=1)
            rate = _per_second(len(keys) * conditions, t["s"])
            label = "materialised wav" if materialize else "manifest only"
            figures.append(Figure(f"stage 2 {label}, nj 1", rate, "utt-cond/s"))
            figures.append(Figure(f"stage 2 {label}: cost / clean read", clean_rate / rate, "x"))
            if materialize:
                materialised = dirs
            else:
                lazy = dirs
        for label, condition_dirs in (("materialised noisy read", materialised), ("on-the-fly noisy read", lazy)):
            sources = [open_audio_source(d) for d in condition_dirs]
            with timer() as t:
                for source in sources:
                    for key in keys:
                        source.load(key)
            rate = _per_second(len(keys) * len(sources), t["s"])
            figures.append(Figure(f"{label} (stage 5 path)", rate, "utt/s"))
            figures.append(Figure(f"{label}: cost / clean read", clean_rate / rate, "x"))

        augmenter = Augmenter(AugmentConfig(), NoiseBank.from_dir(paths["musan"]), NoiseBank.from_dir(paths["rirs"]))
        crops = 100 if args.quick else 600
        rng = np.random.default_rng(0)
        starts = rng.integers(0, int(UTT_SECONDS * 16000) - CROP, size=crops)
        wavs = sorted((paths["test"] / "wav").rglob("*.wav"))
        in_memory = [load_audio(wavs[i % len(wavs)], start=int(s), num_samples=CROP) for i, s in enumerate(starts)]
        with timer() as t:
            for crop in in_memory:
                augmenter(crop, rng)
        figures.append(Figure("fine-tune Augmenter on a 3-s crop in memory", _per_second(crops, t["s"]), "crops/s"))
        with timer() as t:
            for i, start in enumerate(starts):
                augmenter(load_audio(wavs[i % len(wavs)], start=int(start), num_samples=CROP), rng)
        loading = _per_second(crops, t["s"])
        model = _model_crops_per_second(args.quick)
        figures.append(Figure("3-s crop read + fine-tune Augmenter", loading, "crops/s", reference=model,
                              target=">= 10x what the model consumes",
                              note="reference: WavLM Base fwd+bwd crops/s, 1 thread" if model else "no torch"))
        if model:
            figures.append(Figure("WavLM Base fwd+bwd, 3-s crops, 1 thread", model, "crops/s"))
    return figures
