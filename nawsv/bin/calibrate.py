"""Stage 6 (calibration part): fit score-to-LLR calibrators on trials of the training-set calibration sets.

Reads <exp>/embeddings/<calib_set>[_<category>_<snr>] and <exp>/quality/<set>/; writes
<exp>/calibration/{trials,manifest.tsv,calibrators.json,config.yaml} (nawsv.scoring.calibration_stage).
Stage 6's scoring then reports Cllr, minCllr, actual DCF and calibration loss with every calibrator.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.scoring.calibration_stage import CalibrationJob, run_calibration
from nawsv.scoring.config import ScoreConfig
from nawsv.utils.cli import StageParser, add_common_options, add_config_options, run_main, setup_logging
from nawsv.utils.config import load_config

log = logging.getLogger("nawsv.bin.calibrate")


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m nawsv.bin.calibrate", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp_dir", type=Path, required=True, help="experiment dir with embeddings/ and quality/")
    parser.add_argument("--data_dir", type=Path, required=True, help="data root with <calib_set>/ and <test_set>/")
    parser.add_argument("--calib_set", required=True, help="clean calibration set, e.g. mini_dev_calib")
    parser.add_argument("--test_set", action="append", required=True,
                        help="test set whose speakers must not be calibration speakers (repeatable)")
    parser.add_argument("--cohort_set", help="AS-norm cohort (training set), needed when methods include asnorm")
    add_config_options(parser, "stage-6 YAML (conf/score.yaml); its calibration section applies",
                       "calibration.p_fit=0.01")
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(ScoreConfig, args.config, args.override)
    if not cfg.calibration.enabled:
        log.info("calibration.enabled is false: nothing to do")
        return 0
    run_calibration(CalibrationJob(args.exp_dir, args.data_dir, args.calib_set, args.test_set, args.cohort_set), cfg)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
