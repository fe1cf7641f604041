"""Stage 1: corpus -> Kaldi data dirs, noise/RIR banks and WeSpeaker raw/shard lists.

Subcommands, one per corpus kind:
  speakers   VoxCeleb-layout tree (<speaker>/<video>/<utt>.wav) -> wav.scp, utt2spk, spk2utt, utt2dur,
             raw.list, shard.list, trials/<name>
  musan      MUSAN -> musan_train (even file indices) and musan_test (odd) with utt2cat
  bank       any folder of audio (RIRS_NOISES/simulated_rirs, Nonspeech100) -> wav.scp, utt2cat, utt2dur
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.data.prepare import (PrepareConfig, parse_trials_option, prepare_flat_bank, prepare_musan,
                                prepare_speaker_set)
from nawsv.utils.cli import add_common_options, run_main, setup_logging
from nawsv.utils.config import load_config

log = logging.getLogger("nawsv.bin.prepare_data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nawsv.bin.prepare_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", type=Path, help="stage-1 YAML (conf/prepare.yaml); defaults apply when absent")
        sub.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config key, e.g. --override nj=8 (repeatable)")
        add_common_options(sub)

    speakers = commands.add_parser("speakers", help="VoxCeleb-layout speaker tree -> Kaldi dir + lists")
    speakers.add_argument("--wav_root", type=Path, required=True,
                          help="folder holding <speaker>/<video>/<utt>.wav (e.g. vox1_dev_wav/wav)")
    speakers.add_argument("--out", type=Path, required=True, help="output data dir, e.g. data/vox1_dev")
    speakers.add_argument("--trials", action="append", default=[], metavar="NAME=PATH",
                          help="trial list to check and convert into <out>/trials/NAME (repeatable)")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(PrepareConfig, args.config, args.override)
    if args.command == "speakers":
        prepare_speaker_set(args.wav_root, args.out, cfg, parse_trials_option(args.trials))
    elif args.command == "musan":
        prepare_musan(args.musan_root, args.out_root, cfg)
    else:
        prepare_flat_bank(args.root, args.out, args.category, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
