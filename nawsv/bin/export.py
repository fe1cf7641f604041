"""Stage 8: export the fine-tuned speaker model as a self-contained inference package.

<out_dir>/ gets model.ts (traced TorchScript: waveform [batch, samples] float32 16 kHz -> embedding
[batch, dim]), model.onnx with --format onnx|both (needs the [onnx] extra: onnx, onnxruntime), config.yaml
(sample rate, embedding dim, the stage-5 segment protocol, model source + sha256, versions, export checks)
and a hard link (or copy) of avg_model.pt. Each exported graph is checked against the eager model on two
other lengths before it is written. Load the package with nawsv.api.Verifier(<out_dir>) or, without
nawsv, torch.jit.load(<out_dir>/model.ts). A rerun for an unchanged model is skipped.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.export.package import FORMATS, export_model
from nawsv.extract.config import ExtractConfig
from nawsv.utils.cli import StageParser, add_common_options, add_config_options, run_main, setup_logging
from nawsv.utils.config import load_config

log = logging.getLogger("nawsv.bin.export")


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m nawsv.bin.export", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True,
                        help="fine-tuned speaker model, e.g. exp/<name>/finetune/avg_model.pt")
    parser.add_argument("--out_dir", type=Path, required=True, help="export dir, e.g. exp/<name>/export")
    parser.add_argument("--format", choices=sorted(FORMATS), default="torchscript",
                        help="what to export (onnx and both need: pip install -e '.[onnx]')")
    parser.add_argument("--calibrators", type=Path,
                        help="the experiment's calibration/calibrators.json: the package then carries the decision "
                             "calibrator, so the API and `nawsv verify` return LLRs and decisions")
    add_config_options(parser, "stage-5 YAML (conf/extract.yaml) whose segment protocol is recorded in config.yaml",
                       "segments.num=3")
    add_common_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(ExtractConfig, args.config, args.override)
    config = export_model(args.model, args.out_dir, args.format, cfg, args.calibrators)
    log.info("export package: %s", config.parent)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
