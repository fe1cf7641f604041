"""Stages 3 and 4: the NAW-SV warm-up and the fine-tuning, on one process or under torchrun.

  python -m nawsv.bin.train warmup   --config conf/warmup.yaml   --train_data data/vox1_dev \
      --musan data/musan_train --exp_dir exp/nawsv/warmup [--pretrained /path/to/wavlm-base-plus]
  python -m nawsv.bin.train finetune --config conf/finetune.yaml --train_data data/vox1_dev \
      --musan data/musan_train --rirs data/rirs --init exp/nawsv/warmup/student.pt --exp_dir exp/nawsv/finetune
  torchrun --nproc_per_node 4 -m nawsv.bin.train warmup ...      (NCCL on GPUs, gloo on CPU)

A rerun continues from the latest good checkpoint (--resume auto), or reports that the stage is finished.
The experiment directory keeps config.yaml, train.log, tensorboard/ and checkpoints/.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Sequence

from nawsv.protocol import write_stage_record
from nawsv.utils.cli import StageParser, add_common_options, add_config_options, run_main, setup_logging, str2bool
from nawsv.utils.atomic import sweep_stale_temporaries
from nawsv.utils.config import load_config, save_config
from nawsv.utils.errors import ConfigError, ExperimentError
from nawsv.utils.seeding import seed_everything

log = logging.getLogger("nawsv.bin.train")

FINAL = {"warmup": "student.pt", "finetune": "avg_model.pt"}


def build_parser() -> argparse.ArgumentParser:
    parser = StageParser(prog="python -m nawsv.bin.train", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(FINAL), help="warmup (stage 3) or finetune (stage 4)")
    add_config_options(parser, "stage YAML (conf/warmup.yaml or conf/finetune.yaml)", "optim.lr=1e-4")
    parser.add_argument("--train_data", type=Path, required=True,
                        help="training data dir from stage 1 (raw.list or shard.list, see data.list_type)")
    parser.add_argument("--musan", type=Path,
                        help="noise bank for augmentation: the MUSAN train half (data/musan_train)")
    parser.add_argument("--rirs", type=Path, help="RIR bank for augmentation (data/rirs); fine-tuning uses it")
    parser.add_argument("--exp_dir", type=Path, required=True, help="output dir, e.g. exp/nawsv/warmup")
    parser.add_argument("--pretrained", help="local Hugging Face dir of a WavLM, HuBERT or wav2vec 2.0 model; "
                                             "overrides ssl.pretrained (omit for the config's value; null there "
                                             "means random init)")
    parser.add_argument("--init", help="finetune: the warm-up student (exp/.../warmup/student.pt), or 'none' to "
                                       "fine-tune the pre-trained model without warm-up (baseline)")
    parser.add_argument("--dev_data", type=Path,
                        help="optional dev set (Kaldi dir with trials/, speakers not in training) scored after every "
                             "epoch for monitoring (TensorBoard dev/*); never used to pick the model")
    parser.add_argument("--dev_trials", help="trial list name under <dev_data>/trials/ (default: the first one)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA when available")
    parser.add_argument("--resume", default="auto",
                        help="auto: continue from the latest good checkpoint; never: refuse if checkpoints exist; "
                             "or a checkpoint path")
    parser.add_argument("--force_config", type=str2bool, default=False,
                        help="continue an experiment whose saved config.yaml differs from this one")
    add_common_options(parser)
    return parser


def _load_config(args: argparse.Namespace):
    if args.task == "warmup":
        from nawsv.train.warmup import WarmupConfig as Config
    else:
        from nawsv.train.finetune import FinetuneConfig as Config
    overrides = list(args.override)
    if args.pretrained:
        overrides.append(f"ssl.pretrained={args.pretrained}")
    return load_config(Config, args.config, overrides)


def _augmenter(args: argparse.Namespace, cfg):
    from nawsv.data.augment import Augmenter
    from nawsv.data.noise_bank import NoiseBank

    musan = NoiseBank.from_dir(args.musan) if args.musan else None
    rirs = NoiseBank.from_dir(args.rirs) if args.rirs else None
    return Augmenter(cfg.augment, musan, rirs)


def _attach_log_file(path: Path) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s (%(name)s) %(message)s"))
    logging.getLogger("nawsv").addHandler(handler)


def _no_diagnostics(epoch: int) -> dict[str, float]:
    """What the other ranks hold where rank 0 holds the diagnostics (the trainer calls rank 0's alone)."""
    return {}


def _train(args: argparse.Namespace, cfg, ctx) -> None:
    import torch

    from nawsv.data.store import UtteranceStore
    from nawsv.train.distributed import on_rank_zero
    from nawsv.train.loop import Trainer

    if cfg.ssl.random_init and not (args.task == "finetune" and args.init not in (None, "none")):
        log.warning("ssl.pretrained is null: the SSL model is RANDOMLY INITIALISED (preset %r); results are not "
                    "those of a pre-trained model", cfg.ssl.preset)
    store = UtteranceStore.from_data_dir(args.train_data, cfg.data.list_type)
    log.info("training list: %d utterances, %d speakers (%s)", len(store), len(store.speaker_ids), store.source)
    full_store, held_out = store, []
    if args.task == "warmup" and cfg.diagnostics.held_out_utts:
        from nawsv.train.diagnostics import hold_out
        store, held_out = hold_out(store, cfg.diagnostics.held_out_utts, cfg.run.seed)
        log.info("diagnostics: %d utterances of training speakers held out of the warm-up", len(held_out))
    augmenter = _augmenter(args, cfg)
    seed_everything(cfg.run.seed)            # new modules (head, back-end, AAM) start from the same weights every run
    if args.task == "warmup":
        from nawsv.train.warmup import WarmupTask
        task = WarmupTask(cfg, store, augmenter, ctx)
    else:
        from nawsv.train.finetune import FinetuneTask
        task = FinetuneTask(cfg, store, augmenter, ctx, None if args.init == "none" else Path(args.init))
    torch.backends.cudnn.benchmark = True
    dev = None
    if args.dev_data is not None:                # every rank knows; rank 0 evaluates, the others wait
        from nawsv.train.dev_eval import DevEvaluator
        dev = DevEvaluator(args.dev_data, args.dev_trials)
    diagnostics = None
    if held_out:                                 # rank 0 loads the held-out audio and computes; the others wait
        loaded = on_rank_zero(lambda: task.diagnostics(full_store, held_out, args.exp_dir),
                              "loading the held-out utterances of the diagnostics")
        diagnostics = loaded if ctx.is_main else _no_diagnostics
    Trainer(task, cfg.epochs, cfg.optim, cfg.run, args.exp_dir, ctx, dev=dev, diagnostics=diagnostics).fit(args.resume)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = _load_config(args)
    if args.task == "finetune" and not args.init:
        raise ConfigError("finetune needs --init: the warm-up student (exp/<name>/warmup/student.pt), or --init none "
                          "for the baseline without warm-up")
    if args.task == "finetune" and args.init != "none" and not Path(args.init).is_file():
        raise ExperimentError(f"--init {args.init}: the warm-up student does not exist; run the warm-up stage (3) "
                              f"first, or pass --init none for the baseline without warm-up")
    from nawsv.formats.kaldi import require_utf8_path
    from nawsv.train.distributed import cleanup, init_distributed, on_rank_zero
    from nawsv.utils.lock import directory_lock

    require_utf8_path(args.exp_dir.resolve(), "--exp_dir", "TensorBoard cannot write its event files there")

    ctx = init_distributed(args.device)
    if ctx.device.type == "cpu" and cfg.run.precision == "bf16":
        log.info("running on CPU: bf16 autocast is used on CUDA only, training in fp32")
    try:
        with contextlib.ExitStack() as stack:
            final = args.exp_dir / FINAL[args.task]

            def open_experiment() -> bool:        # rank 0 alone; a refusal here ends every rank at once
                stack.enter_context(directory_lock(args.exp_dir, f"stage {args.task}"))
                sweep_stale_temporaries(args.exp_dir)     # of an earlier run killed by SIGKILL
                save_config(cfg, args.exp_dir, allow_change=args.force_config)
                write_stage_record(args.exp_dir, args.task, cfg)
                if final.exists():
                    return True
                _attach_log_file(args.exp_dir / "train.log")
                return False

            if on_rank_zero(open_experiment, "opening the experiment directory", share=True):   # rank 0's view
                log.info("%s exists: stage already finished (use a new --exp_dir to train again)", final)
                return 0
            _train(args, cfg, ctx)
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
