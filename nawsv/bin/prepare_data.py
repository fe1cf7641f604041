"""Stage 1: corpus -> Kaldi data dirs, noise/RIR banks and WeSpeaker raw/shard lists.

Subcommands, one per corpus kind:
  speakers   VoxCeleb-layout tree (<speaker>/<video>/<utt>.wav) -> wav.scp, utt2spk, spk2utt, utt2dur,
             raw.list, shard.list, trials/<name>
  musan      MUSAN -> musan_train (even file indices) and musan_test (odd) with utt2cat
  bank       any folder of audio (RIRS_NOISES/simulated_rirs, Nonspeech100) -> wav.scp, utt2cat, utt2dur
  convert    a tree of AAC .m4a files (VoxCeleb2 dev) -> the same tree as 16 kHz FLAC/WAV, once: parallel
             (--nj), split over array jobs (--job i --num_jobs n), resumable, every file written atomically.
             Needs PyAV (pip install 'nawsv[m4a]'); prepare the converted tree with `speakers` afterwards.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.data.prepare import (KNOWN_SETS, PrepareConfig, parse_trials_option, prepare_flat_bank, prepare_musan,
                                prepare_speaker_set)
from nawsv.utils.cli import (StageParser, add_common_options, add_config_options, add_job_options, run_main,
                            setup_logging)
from nawsv.utils.config import load_config

log = logging.getLogger("nawsv.bin.prepare_data")


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m nawsv.bin.prepare_data", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        add_config_options(sub, "stage-1 YAML (conf/prepare.yaml); defaults apply when absent", "nj=8")
        add_common_options(sub)

    speakers = commands.add_parser("speakers", help="VoxCeleb-layout speaker tree -> Kaldi dir + lists")
    speakers.add_argument("--wav_root", type=Path, required=True, action="append",
                          help="folder holding <speaker>/<video>/<utt>.wav (e.g. vox1_dev_wav/wav); repeat it to "
                               "merge trees into one set (Vox1 dev + test for the Vox1-E/H trials)")
    speakers.add_argument("--out", type=Path, required=True, help="output data dir, e.g. data/vox1_dev")
    speakers.add_argument("--trials", action="append", default=[], metavar="NAME=PATH",
                          help="trial list to check and convert into <out>/trials/NAME (repeatable)")
    speakers.add_argument("--expect", choices=sorted(KNOWN_SETS),
                          help="published corpus to compare the utterance, speaker and official trial counts with "
                               "(a difference is a warning, not an error)")
    common(speakers)

    musan = commands.add_parser("musan", help="MUSAN -> musan_train / musan_test banks split by index parity")
    musan.add_argument("--musan_root", type=Path, required=True, help="folder holding noise/ music/ speech/")
    musan.add_argument("--out_root", type=Path, required=True, help="parent of musan_train and musan_test")
    common(musan)

    bank = commands.add_parser("bank", help="a folder of audio (RIRs, Nonspeech100) -> a bank dir")
    bank.add_argument("--root", type=Path, required=True, help="folder searched recursively for .wav/.flac")
    bank.add_argument("--out", type=Path, required=True, help="output bank dir, e.g. data/rirs")
    bank.add_argument("--category", required=True, help="category written to utt2cat, e.g. rir or nonspeech")
    common(bank)

    convert = commands.add_parser("convert", help="AAC .m4a tree (VoxCeleb2) -> 16 kHz FLAC/WAV tree, once")
    convert.add_argument("--src_root", type=Path, required=True, help="folder searched recursively for .m4a "
                                                                       "(VoxCeleb2: <vox2_root>/dev/aac)")
    convert.add_argument("--dst_root", type=Path, required=True,
                         help="output tree (same relative paths, new suffix); files already there are skipped")
    convert.add_argument("--format", choices=["flac", "wav"], default="flac",
                         help="container of the 16-bit output; FLAC is lossless and smaller than WAV")
    add_job_options(convert, "files are dealt round-robin in sorted order")
    common(convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(PrepareConfig, args.config, args.override)
    if args.command == "speakers":
        prepare_speaker_set(args.wav_root, args.out, cfg, parse_trials_option(args.trials), args.expect)
    elif args.command == "convert":
        from nawsv.data.m4a import convert_tree

        convert_tree(args.src_root, args.dst_root, audio_format=args.format, nj=cfg.nj, job=args.job,
                     num_jobs=args.num_jobs, on_bad_audio=cfg.on_bad_audio)
    elif args.command == "musan":
        prepare_musan(args.musan_root, args.out_root, cfg)
    else:
        prepare_flat_bank(args.root, args.out, args.category, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
