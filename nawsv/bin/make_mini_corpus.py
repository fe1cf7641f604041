"""Generate the synthetic mini corpus (VoxCeleb, MUSAN, RIRS_NOISES and Nonspeech100 layouts).

Deterministic: the same config gives the same bytes. A finished corpus is recognised by its stamp
(the resolved config) and reused; a different config refuses to overwrite it unless --force true.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.data.synthetic import MiniCorpusSpec, make_mini_corpus
from nawsv.utils.atomic import atomic_directory, atomic_write_text
from nawsv.utils.cli import StageParser, add_common_options, add_config_options, run_main, setup_logging, str2bool
from nawsv.utils.config import dump_config, load_config
from nawsv.utils.errors import ExperimentError
from nawsv.utils.lock import sibling_lock

log = logging.getLogger("nawsv.bin.make_mini_corpus")
STAMP = "corpus_config.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m nawsv.bin.make_mini_corpus", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="corpus root to create")
    add_config_options(parser, "YAML with MiniCorpusSpec keys (egs/mini/conf/corpus.yaml)", "dev_speakers=20")
    parser.add_argument("--force", type=str2bool, default=False,
                        help="replace an existing corpus made with a different config")
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    spec = load_config(MiniCorpusSpec, args.config, args.override)
    stamp = args.out / STAMP
    wanted = dump_config(spec)
    if stamp.exists():
        if stamp.read_text(encoding="utf-8") == wanted:
            log.info("%s already holds this corpus; nothing to do", args.out)
            return 0
        if not args.force:
            raise ExperimentError(f"{args.out} holds a corpus made with a different config ({stamp}); "
                                  f"choose another --out or pass --force true to replace it")
    elif args.out.exists() and any(args.out.iterdir()) and not args.force:
        raise ExperimentError(f"{args.out} exists and is not a nawsv mini corpus; choose another --out")
    with sibling_lock(args.out, "make_mini_corpus"), atomic_directory(args.out) as staging:
        make_mini_corpus(staging, spec)
        atomic_write_text(staging / STAMP, wanted)
    log.info("wrote the synthetic corpus to %s (random voices, labelled synthetic)", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
