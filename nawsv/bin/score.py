"""Stage 6: cosine / segment-mean / full / AS-norm scoring of every trial list in every test condition,
then EER and minDCF into <exp>/results.tsv and <exp>/results.md (also printed).

Conditions are the clean <test_set> plus every <exp>/embeddings/<test_set>_<category>_<snr> directory whose
category and SNR the config lists (or exactly the config's `conditions`).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.scoring.config import ScoreConfig
from nawsv.scoring.stage import ScoreJob, run_score_stage
from nawsv.utils.cli import StageParser, add_common_options, add_config_options, run_main, setup_logging
from nawsv.utils.config import load_config
from nawsv.utils.errors import ConfigError

log = logging.getLogger("nawsv.bin.score")


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m nawsv.bin.score", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp_dir", type=Path, required=True,
                        help="experiment dir holding embeddings/<set>/xvector.scp; scores/ and results.* go here")
    parser.add_argument("--data_dir", type=Path, required=True,
                        help="Kaldi data root holding <test_set>/trials/ and <cohort_set>/utt2spk")
    parser.add_argument("--test_set", action="append", required=True,
                        help="clean test set name, e.g. mini_test or vox1_O (repeatable: several sets share one "
                             "results table)")
    parser.add_argument("--trials", action="append", default=[], metavar="NAME",
                        help="trial list name under <data_dir>/<test_set>/trials/ (repeatable; default: all of "
                             "them; with several test sets, the names each set holds)")
    parser.add_argument("--cohort_set", default=None,
                        help="training set whose speaker-mean embeddings form the AS-norm cohort, e.g. mini_dev "
                             "(needed when methods include asnorm)")
    add_config_options(parser, "stage-6 YAML (conf/score.yaml); defaults apply when absent", "asnorm_top_n=100")
    add_common_options(parser)
    return parser


def _trials_per_set(data_dir: Path, test_sets: list[str], names: list[str]) -> dict[str, list[str]]:
    """Which trial lists each test set scores: all of its own when none are named, else the named ones it holds."""
    if not names or len(test_sets) == 1:
        return {test_set: names for test_set in test_sets}
    chosen = {test_set: [n for n in names if (data_dir / test_set / "trials" / n).is_file()] for test_set in test_sets}
    unknown = [n for n in names if not any(n in found for found in chosen.values())]
    if unknown:
        raise ConfigError(f"trial list(s) {unknown} are in none of the test sets {test_sets} "
                          f"(looked in <data_dir>/<set>/trials/)")
    empty = [test_set for test_set, found in chosen.items() if not found]
    if empty:
        raise ConfigError(f"test set(s) {empty} hold none of the trial lists {names}; drop them or name their lists")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(ScoreConfig, args.config, args.override)
    trials = _trials_per_set(args.data_dir, args.test_set, args.trials)
    jobs = [ScoreJob(exp_dir=args.exp_dir, data_dir=args.data_dir, test_set=test_set, trials=trials[test_set],
                     cohort_set=args.cohort_set) for test_set in args.test_set]
    rows, text = run_score_stage(jobs, cfg)
    log.info("wrote %d result rows to %s and %s", len(rows), args.exp_dir / "results.tsv", args.exp_dir / "results.md")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
