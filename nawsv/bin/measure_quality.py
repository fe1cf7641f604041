"""Stage 5 (quality part): per-utterance SNR estimates and durations of data sets, for QMF calibration.

Writes <out_root>/<set>/utt2snr and utt2dur (nawsv.extract.quality); sets may be shell patterns
(e.g. 'mini_test_*_*'), expanded against --data_root. A rerun keeps complete tables.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.bin.extract import _expand_sets
from nawsv.extract.quality import measure_quality
from nawsv.utils.cli import StageParser, add_common_options, run_main, setup_logging

log = logging.getLogger("nawsv.bin.measure_quality")


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m nawsv.bin.measure_quality", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", type=Path, required=True, help="root of the data dirs, e.g. data")
    parser.add_argument("--sets", nargs="+", required=True, help="set names or shell patterns under --data_root")
    parser.add_argument("--out_root", type=Path, required=True, help="e.g. exp/nawsv/quality")
    parser.add_argument("--nj", type=int, default=0,
                        help="DataLoader workers reading the audio (0: read in this process)")
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    for name in _expand_sets(args.sets, args.data_root):
        measure_quality(args.data_root / name, args.out_root / name, num_workers=max(args.nj, 0))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
