"""Stage 5: speaker embeddings of Kaldi data dirs to kaldiio-readable ark/scp.

Per utterance, <out_dir>/xvector.{ark,scp} holds the whole-utterance embedding (float32 vector; utterances
longer than whole.max_seconds are cut into equal windows whose embeddings are averaged) and
<out_dir>/xvector_seg.{ark,scp} the N-segment embeddings (float32 N x D matrix; default 5 x 3 s at starts
linspace(0, len - 3 s, 5); shorter utterances are wrap-padded to 3 s first). Embeddings are the raw
back-end output: no length normalisation (scoring normalises). scp lines are sorted by key and hold the
ark's absolute path.

Data dirs may be clean Kaldi dirs or stage-2 noisy conditions (materialised or mixed on the fly from their
manifest). Name them as --data_dir/--out_dir pairs, or as --sets under --data_root / --emb_root (shell
patterns such as 'vox1_O_*' are expanded against --data_root).

Slurm arrays: run jobs 0..n-1 with --job i --num_jobs n; the chunks of all the sets named are numbered one
after the other and dealt round-robin, so small sets do not leave jobs idle. The last job to finish merges
each set (or run once more with --merge true). A rerun skips finished sets and chunks; a set made with another model or
protocol is refused (extract_stamp.yaml records which).
"""
from __future__ import annotations

import argparse
import fnmatch
import itertools
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.extract.config import ExtractConfig
from nawsv.extract.stage import SpeakerModelFile, count_chunks, extract_set
from nawsv.utils.cli import (StageParser, add_common_options, add_config_options, add_job_options, positive_int,
                            run_main, setup_logging)
from nawsv.utils.config import load_config
from nawsv.utils.errors import ConfigError
from nawsv.utils.jobs import JobShare, UnfinishedUnits

log = logging.getLogger("nawsv.bin.extract")


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m nawsv.bin.extract", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True,
                        help="fine-tuned speaker model, e.g. exp/<name>/finetune/avg_model.pt")
    parser.add_argument("--data_dir", type=Path, action="append", default=[],
                        help="data dir to embed (repeatable; pair each with an --out_dir)")
    parser.add_argument("--out_dir", type=Path, action="append", default=[],
                        help="output dir of the matching --data_dir, e.g. exp/<name>/embeddings/<set>")
    parser.add_argument("--sets", nargs="+", default=[], metavar="SET",
                        help="set names (or shell patterns) under --data_root, written to --emb_root/<set>")
    parser.add_argument("--data_root", type=Path, help="parent of the --sets data dirs, e.g. data")
    parser.add_argument("--emb_root", type=Path, help="parent of the --sets output dirs, e.g. exp/<name>/embeddings")
    add_config_options(parser, "stage-5 YAML (conf/extract.yaml); defaults apply when absent", "segments.num=3")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--num_threads", type=positive_int,
                        help="CPU threads of the model (default: torch's choice, one per core); on shared nodes "
                             "set it to the cores you were given")
    add_job_options(parser, "the chunks of all sets are dealt round-robin",
                    merge="only merge finished partial arks (fails naming any chunk still missing)")
    add_common_options(parser)
    return parser


def _expand_sets(sets: Sequence[str], data_root: Path) -> list[str]:
    """Set names, with shell patterns expanded against the dirs under ``data_root`` (sorted, no repeats)."""
    names: list[str] = []
    for item in sets:
        if any(c in item for c in "*?["):
            found = sorted(p.name for p in data_root.iterdir() if p.is_dir() and fnmatch.fnmatchcase(p.name, item))
            if not found:
                raise ConfigError(f"--sets pattern {item!r} matches no directory under {data_root}")
            names += found
        else:
            names.append(item)
    return list(dict.fromkeys(names))


def set_pairs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(data dir, out dir) pairs from either form of the command line."""
    if args.sets:
        if args.data_dir or args.out_dir or args.data_root is None or args.emb_root is None:
            raise ConfigError("--sets needs --data_root and --emb_root and excludes --data_dir/--out_dir")
        if not args.data_root.is_dir():
            raise ConfigError(f"--data_root {args.data_root} is not a directory")
        return [(args.data_root / name, args.emb_root / name) for name in _expand_sets(args.sets, args.data_root)]
    if not args.data_dir or len(args.data_dir) != len(args.out_dir):
        raise ConfigError(f"give one --out_dir per --data_dir (got {len(args.data_dir)} and {len(args.out_dir)}), "
                          f"or use --sets with --data_root and --emb_root")
    return list(zip(args.data_dir, args.out_dir, strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(ExtractConfig, args.config, args.override)
    JobShare(args.job, args.num_jobs, args.array_first)          # refuses a job outside 0 .. num_jobs-1
    pairs = set_pairs(args)
    first_units = list(itertools.accumulate((count_chunks(data_dir, cfg) for data_dir, _ in pairs[:-1]), initial=0))
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    model = SpeakerModelFile(args.model, args.device, cfg.bf16)
    complete, unfinished = 0, []
    for (data_dir, out_dir), first_unit in zip(pairs, first_units, strict=True):
        try:
            complete += extract_set(model, data_dir, out_dir, cfg, job=args.job, num_jobs=args.num_jobs,
                                    merge_only=args.merge, first_unit=first_unit, array_first=args.array_first)
        except UnfinishedUnits as exc:          # a merge goes through every set, then names all that is missing
            unfinished.append(exc)
    if unfinished:
        raise UnfinishedUnits.combine(unfinished)
    log.info("%d of %d set(s) complete", complete, len(pairs))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
