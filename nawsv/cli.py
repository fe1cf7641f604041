"""The ``nawsv`` console command: embed audio lists to ark/scp and verify pairs of recordings.

    nawsv embed  MODEL  wav.scp|DATA_DIR  out.ark   [--segments true]   -> out.ark + out.scp
    nawsv verify MODEL  enrol.wav test.wav          [--p_target 0.01]   -> score, LLR, operating point, decision
    nawsv compare EXP_A EXP_B [...]                 [--out DIR]         -> one table, paired intervals

MODEL is an export dir (stage 8), an avg_model.pt, or a finetune/experiment dir holding one.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from nawsv.utils.cli import StageParser, add_common_options, run_main, setup_logging, str2bool
from nawsv.utils.errors import DataError

log = logging.getLogger("nawsv.cli")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="export dir, avg_model.pt, or a finetune/experiment dir")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    add_common_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="nawsv", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{embed,verify,compare}")
    embed = commands.add_parser("embed", help="embed every utterance of a wav.scp or data dir to ark/scp",
                                description="Write one embedding per utterance (keys sorted) to OUT_ARK and the "
                                            "matching scp next to it (OUT_ARK with .scp instead of .ark).")
    _add_model_options(embed)
    embed.add_argument("input", type=Path,
                       help="a wav.scp-style list ('key path' lines) or a data dir (clean or stage-2 noisy)")
    embed.add_argument("out_ark", type=Path, help="output ark, e.g. emb/xvector.ark (scp written beside it)")
    embed.add_argument("--segments", type=str2bool, default=False,
                       help="write the N-segment embeddings (N x D matrices) instead of whole-utterance vectors")
    verify = commands.add_parser("verify", help="score one enrolment/test pair of recordings",
                                 description="Print the score of a pair and, when the export package carries a "
                                             "calibrator (stage 8 after the calibration step), its LLR, the "
                                             "operating point and the decision (accept when the LLR reaches the "
                                             "Bayes threshold). Without a calibrator it says so and decides only "
                                             "with an explicit raw-score --threshold.")
    _add_model_options(verify)
    verify.add_argument("enrol", type=Path, help="enrolment recording (any soundfile format; resampled to 16 kHz)")
    verify.add_argument("test", type=Path, help="test recording")
    verify.add_argument("--method", choices=("cosine", "segments", "full"), default="cosine",
                        help="cosine of whole-utterance embeddings, mean segment-pair cosine, or their average")
    verify.add_argument("--threshold", type=float,
                        help="raw-score threshold (uncalibrated): decide accept when score >= threshold instead of "
                             "at the calibrated operating point")
    verify.add_argument("--p_target", type=float, help="operating point: prior of a target trial (default: the "
                                                         "package's, recorded at calibration)")
    verify.add_argument("--c_miss", type=float, default=1.0, help="operating point: cost of a miss")
    verify.add_argument("--c_fa", type=float, default=1.0, help="operating point: cost of a false alarm")
    from nawsv.bin.compare import add_compare_arguments

    compare = commands.add_parser("compare", help="compare experiments in one table with paired bootstrap intervals",
                                  description="See python -m nawsv.bin.compare --help.")
    add_compare_arguments(compare)
    return parser


def _utterances(source: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(key, samples) in sorted key order from a data dir or a wav.scp-style file."""
    from nawsv.data.audio import load_audio
    from nawsv.formats.kaldi import read_wav_scp
    from nawsv.data.sources import open_audio_source

    if source.is_dir():
        audio = open_audio_source(source)
        for key in sorted(audio.keys()):
            yield key, audio.load(key)
        return
    if not source.is_file():
        raise DataError(f"{source} is neither a data dir nor a wav.scp file")
    table = read_wav_scp(source)
    for key in sorted(table):
        yield key, load_audio(table[key], key)


def _embed(args: argparse.Namespace) -> int:
    from nawsv.api import Verifier
    from nawsv.extract.arkio import write_ark_scp

    verifier = Verifier(args.model, device=args.device)
    records = ((key, verifier.embed(samples, segments=args.segments)) for key, samples in _utterances(args.input))
    scp = args.out_ark.with_suffix(".scp") if args.out_ark.suffix == ".ark" else Path(f"{args.out_ark}.scp")
    count = write_ark_scp(args.out_ark, scp, records)
    log.info("wrote %d %s embeddings to %s and %s", count, "segment" if args.segments else "whole-utterance",
             args.out_ark, scp)
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Lines ``score``, ``llr``, ``operating_point``, ``decision``: each ``name value ...`` (``-`` when absent)."""
    from nawsv.api import OperatingPoint, Verifier

    point = None
    if args.p_target is not None:
        try:
            point = OperatingPoint(args.p_target, args.c_miss, args.c_fa)
        except ValueError as exc:
            raise DataError(f"--p_target/--c_miss/--c_fa: {exc}") from None
    result = Verifier(args.model, device=args.device, operating_point=point).verify(args.enrol, args.test,
                                                                                   method=args.method)
    print(f"score {result.score:.6f} ({args.method})")
    if args.threshold is not None:
        print("llr - (not used: deciding on the raw score)")
        print(f"operating_point - (raw-score threshold {args.threshold:g}, uncalibrated)")
        print(f"decision {'accept' if result.score >= args.threshold else 'reject'}")
    elif result.llr is None:
        print(f"llr - (no calibrator for {args.method} in {args.model}: export after the calibration step, "
              f"python -m nawsv.bin.export --calibrators <exp>/calibration/calibrators.json)")
        print("operating_point -")
        print("decision - (no decision without a calibrator; --threshold decides on the raw score)")
    else:
        op = result.operating_point
        print(f"llr {result.llr:.4f} (calibrator {result.calibrator})")
        print(f"operating_point p_target={op.p_target:g} c_miss={op.c_miss:g} c_fa={op.c_fa:g} "
              f"(Bayes threshold on the LLR {op.threshold:.4f})")
        print(f"decision {'accept' if result.accept else 'reject'}")
    return 0


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "compare":
        from nawsv.bin.compare import run
        return run(args)
    return _embed(args) if args.command == "embed" else _verify(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``nawsv = nawsv.cli:main``)."""
    return run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
