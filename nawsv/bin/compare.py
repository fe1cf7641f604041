"""Compare experiments: one table of every (category, SNR) cell and average with intervals, the difference of
each experiment from the first with a paired bootstrap interval, and EER-versus-SNR figures per category.

  python -m nawsv.bin.compare egs/mini/exp/baseline egs/mini/exp/nawsv --out egs/mini/exp/compare
  nawsv compare EXP_A EXP_B [...]            (the same command)

Refuses experiments scored on different trial lists or conditions. Prints the table (markdown); with --out also
writes compare.md, compare.tsv (every metric) and compare_<trials>.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.utils.cli import StageParser, add_common_options, run_main, setup_logging

log = logging.getLogger("nawsv.bin.compare")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the comparison (shared with the ``nawsv compare`` subcommand)."""
    parser.add_argument("experiments", type=Path, nargs="+",
                        help="experiment dirs after stage 6 (results.tsv, scores/); the first is the reference")
    parser.add_argument("--out", type=Path, help="dir for compare.md, compare.tsv and the figures (optional)")
    parser.add_argument("--metric", default="eer", help="metric of the printed table: eer or mindcf_<p>")
    parser.add_argument("--resamples", type=int, help="bootstrap resamples (default: the first experiment's "
                                                      "bootstrap.resamples from stage 6)")
    parser.add_argument("--unit", choices=("speaker", "utterance"), help="what is resampled (default: as in stage 6)")
    parser.add_argument("--seed", type=int, help="bootstrap seed (default: as in stage 6)")
    parser.add_argument("--dpi", type=int, default=120, help="figure resolution")
    add_common_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m nawsv.bin.compare", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compare_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Compare, print the table and write the outputs."""
    from nawsv.scoring.compare import (compare, comparison_markdown, comparison_tsv, experiment_names,
                                       load_experiment, snr_panels)
    from nawsv.scoring.config import BootstrapConfig
    from nawsv.scoring.plots import plot_compare_eer_vs_snr
    from nawsv.utils.atomic import atomic_write_text
    from nawsv.utils.config import config_from_dict, to_dict
    from nawsv.utils.errors import ConfigError

    names = experiment_names(args.experiments)
    experiments = [load_experiment(path, name) for path, name in zip(args.experiments, names, strict=True)]
    chosen = {k: v for k, v in (("resamples", args.resamples), ("unit", args.unit), ("seed", args.seed))
              if v is not None}
    cfg = config_from_dict(BootstrapConfig, to_dict(experiments[0].score_cfg.bootstrap) | chosen,
                           "the bootstrap options of compare")
    if not cfg.enabled:
        cfg = dataclasses.replace(cfg, resamples=1000)
    metrics = ["eer"] + [f"mindcf_{p:g}" for p in experiments[0].score_cfg.p_targets]
    if args.metric not in metrics:
        raise ConfigError(f"--metric {args.metric!r} is not one of {metrics}")
    comparison = compare(experiments, cfg)
    text = comparison_markdown(comparison, args.metric)
    print(text, end="")
    if args.out is not None:
        atomic_write_text(args.out / "compare.md", text)
        atomic_write_text(args.out / "compare.tsv", comparison_tsv(comparison))
        label = "EER (%)" if args.metric == "eer" else args.metric
        for trials in dict.fromkeys(r.trials for r in experiments[0].rows):
            panels = snr_panels(comparison, trials, args.metric)
            if panels:
                plot_compare_eer_vs_snr(args.out / f"compare_{trials}.png", panels, label, args.dpi)
        log.info("wrote %s", args.out / "compare.md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run(args)


if __name__ == "__main__":
    sys.exit(run_main(main))
