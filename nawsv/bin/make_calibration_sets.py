"""Stage 2 (calibration part): the calibration sets, drawn from the training set only.

<out_root>/<name>/ holds calibration.utts_per_speaker utterances of every training speaker (seeded by
calibration.seed; the choice is recorded in calibration.yaml), and <out_root>/<name>_<category>_<snr>/ its
noisy copies made with the training half of MUSAN at calibration.categories x calibration.snrs, deterministic
and resumable like the noisy test sets (each with its manifest.tsv). Options come from the stage-6 config
(conf/score.yaml, section calibration), since the calibrators are part of scoring.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.data.calibration_sets import make_calibration_sets
from nawsv.data.noisy_sets import NoisySetConfig
from nawsv.scoring.config import ScoreConfig
from nawsv.utils.cli import (StageParser, add_common_options, add_config_options, positive_int, run_main,
                             setup_logging, str2bool)
from nawsv.utils.config import load_config

log = logging.getLogger("nawsv.bin.make_calibration_sets")


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m nawsv.bin.make_calibration_sets", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data", type=Path, required=True, help="training set (Kaldi dir), e.g. data/mini_dev")
    parser.add_argument("--musan", type=Path, required=True, help="the training half of MUSAN (data/musan_train)")
    parser.add_argument("--out_root", type=Path, required=True, help="where the calibration set dirs go (data/)")
    parser.add_argument("--name", help="calibration set name (default: <train set>_calib)")
    parser.add_argument("--materialize", type=str2bool, default=True, help="write the noisy audio (else manifests)")
    parser.add_argument("--nj", type=positive_int, default=1, help="worker processes")
    add_config_options(parser, "stage-6 YAML (conf/score.yaml); its calibration section applies",
                       "calibration.utts_per_speaker=2")
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    calib = load_config(ScoreConfig, args.config, args.override).calibration
    noisy = NoisySetConfig(seed=calib.seed, categories=list(calib.categories),
                           snrs=[float(s) for s in calib.snrs], babble_talkers=calib.babble_talkers)
    name = args.name or f"{args.train_data.resolve().name}_calib"
    dirs = make_calibration_sets(args.train_data, args.out_root, name, calib.utts_per_speaker, calib.seed, noisy,
                                 args.musan, nj=args.nj, materialize=args.materialize)
    log.info("%d calibration set dir(s) under %s", len(dirs), args.out_root)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
