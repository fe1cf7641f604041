"""Stage 7: EER-versus-SNR and DET figures plus report.md (our results beside the paper's numbers), from
<exp>/results.tsv and the score files of stage 6. Writes <exp>/report/."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.scoring.config import ReportConfig
from nawsv.utils.cli import StageParser, add_common_options, add_config_options, run_main, setup_logging
from nawsv.utils.config import load_config

log = logging.getLogger("nawsv.bin.report")


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m nawsv.bin.report", description=__doc__)
    parser.add_argument("--exp_dir", type=Path, required=True,
                        help="experiment dir holding results.tsv and scores/ from stage 6; report/ goes here")
    add_config_options(parser, "stage-7 YAML (conf/report.yaml); defaults apply when absent", "det_snr=5")
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(ReportConfig, args.config, args.override)
    from nawsv.scoring.report import run_report

    run_report(args.exp_dir, cfg)
    log.info("wrote %s", args.exp_dir / "report" / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
