"""Stage 2: deterministic noisy test sets, <out_root>/<set>_<category>_<snr>/ per (category, SNR) condition.

Every utterance of every condition gets noise from a generator seeded by (seed, condition, utterance), so
the audio is identical for any --nj, any --job/--num_jobs split and any rerun. Each condition holds a
manifest.tsv (noise keys, offsets, gain, peak scale, clipped samples per utterance), the clean set's
utt2spk/spk2utt/trials and, with --materialize true, 16-bit audio plus a wav.scp. Without it, no wav.scp
is written and stage 5 mixes on the fly from the manifest (bit-identical to the materialised audio).

A rerun skips finished conditions and chunks. Slurm arrays: run jobs 0..n-1 with --job i --num_jobs n;
the (condition, chunk) pairs are dealt round-robin, so a small set still keeps one job per condition busy.
The last job to finish merges each condition (or run once more with --merge true).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.data.noisy_sets import AUDIO_FORMATS, NoisySetConfig, make_noisy_sets
from nawsv.utils.cli import (StageParser, add_common_options, add_config_options, add_job_options, positive_int,
                            run_main, setup_logging, str2bool)
from nawsv.utils.config import load_config
from nawsv.utils.errors import ConfigError

log = logging.getLogger("nawsv.bin.make_noisy_sets")


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m nawsv.bin.make_noisy_sets", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="clean test set (Kaldi dir), e.g. data/vox1_O")
    parser.add_argument("--out_root", type=Path, required=True,
                        help="parent of the condition dirs <set>_<category>_<snr>, e.g. data")
    parser.add_argument("--musan", type=Path,
                        help="MUSAN *test* half bank (data/musan_test); needed for noise, music and babble")
    parser.add_argument("--nonspeech", type=Path, help="Nonspeech100 bank (data/nonspeech); needed for nonspeech")
    parser.add_argument("--skip_category", action="append", default=[], metavar="CATEGORY",
                        help="leave a category of the config out (repeatable), e.g. nonspeech when no Nonspeech100 "
                             "bank was prepared; results then say those cells were not built")
    parser.add_argument("--set_name", help="name used in the condition dirs (default: the --data folder name)")
    add_config_options(parser, "stage-2 YAML (conf/noisy.yaml); defaults apply when absent", "snrs=[0,10]")
    parser.add_argument("--materialize", type=str2bool, default=True,
                        help="write the mixed audio and a wav.scp (true), or only the manifest (false)")
    parser.add_argument("--audio_format", choices=AUDIO_FORMATS, default="wav",
                        help="container of materialised audio; both are lossless 16-bit PCM")
    parser.add_argument("--nj", type=positive_int, default=1, help="worker processes")
    add_job_options(parser, "(condition, chunk) pairs are dealt round-robin",
                    merge="only merge finished partial manifests (fails naming any job still missing)")
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(NoisySetConfig, args.config, args.override)
    if args.skip_category:
        unknown = sorted(set(args.skip_category) - set(cfg.categories))
        if unknown:
            raise ConfigError(f"--skip_category {', '.join(unknown)}: not among the config's categories "
                              f"{cfg.categories}")
        kept = [c for c in cfg.categories if c not in args.skip_category]
        if not kept:
            raise ConfigError(f"--skip_category leaves no category of {cfg.categories} to build")
        cfg = dataclasses.replace(cfg, categories=kept)
        log.info("leaving out %s (--skip_category): building %s", ", ".join(args.skip_category), ", ".join(kept))
    dirs = make_noisy_sets(args.data, args.out_root, cfg, musan=args.musan, nonspeech=args.nonspeech,
                           set_name=args.set_name, materialize=args.materialize, audio_format=args.audio_format,
                           nj=args.nj, job=args.job, num_jobs=args.num_jobs, merge_only=args.merge,
                           array_first=args.array_first)
    log.info("%d condition dir(s) under %s", len(dirs), args.out_root)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
