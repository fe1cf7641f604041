"""WeSpeaker's own extract.py and average_model.py with nawsv's modules registered, so they read bridge experiments.

WeSpeaker's ``bin/extract.py`` builds the model from the experiment's ``config.yaml``; for a model trained with
nawsv's modules (``nawsv_ssl``, ``NAWSV_ECAPA_TDNN``) its lookup fails unless :func:`register` ran in the same
process, which this entry point does before handing the command line to WeSpeaker's unmodified function. Without a
GPU (or with ``--device cpu``) extraction runs under :func:`~nawsv.integrations.wespeaker.cpu_shim.cpu_devices`:
``extract.py`` asks for ``torch.device("cuda")`` unconditionally. Arguments after the tool name are WeSpeaker's own
(``--help`` lists them); run in ``.venv-wespeaker``::

    python -m nawsv.integrations.wespeaker.tools average --src_path exp/lmft/models --dst_model \\
        exp/lmft/models/avg_model.pt --num 2
    python -m nawsv.integrations.wespeaker.tools extract --config exp/lmft/config.yaml \\
        --model_path exp/lmft/models/avg_model.pt --data_type raw --data_list data/vox1/raw.list \\
        --embed_ark exp/lmft/embeddings/vox1/xvector.ark --batch_size 1 --num_workers 1 [--device cpu]

nawsv's own stages 5-7 take the same experiment through ``python -m nawsv.integrations.wespeaker.convert to-nawsv``.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Sequence

TOOLS = {"extract": "wespeaker/bin/extract.py: embeddings to ark/scp (Kaldi format, kaldiio-readable); it reads\n"
                    "           --config --model_path --data_type --data_list --embed_ark [--batch_size --num_workers]",
         "average": "wespeaker/bin/average_model.py: average the last --num checkpoints of --src_path"}
DEVICES = ("auto", "cpu", "cuda")


def usage() -> str:
    tools = "\n".join(f"  {name:8s} {what}" for name, what in TOOLS.items())
    return (f"usage: python -m nawsv.integrations.wespeaker.tools {{{','.join(TOOLS)}}} [--device "
            f"{'|'.join(DEVICES)}] [WeSpeaker's arguments]\n\n{__doc__.split(chr(10) * 2)[0]}\n\n{tools}\n\n"
            f"--device (extract only): auto = CUDA when visible, else the CPU through the device shim.\n"
            f"'<tool> --help' shows WeSpeaker's own options of that tool.")


def pop_device(args: list[str]) -> tuple[str, list[str]]:
    """``--device X`` / ``--device=X`` taken out of WeSpeaker's arguments."""
    rest, device = [], "auto"
    items = iter(args)
    for item in items:
        if item == "--device":
            device = next(items, "")
        elif item.startswith("--device="):
            device = item.split("=", 1)[1]
        else:
            rest.append(item)
    if device not in DEVICES:
        raise SystemExit(f"ERROR: --device {device!r}: choose one of {', '.join(DEVICES)}")
    return device, rest


def run_extract(args: list[str], device: str) -> None:
    """WeSpeaker's ``extract()`` through fire (its own command line), on the CPU unless CUDA is used."""
    import fire
    import torch

    import wespeaker.bin.extract as extract
    from nawsv.integrations.wespeaker.cpu_shim import cpu_devices
    from nawsv.integrations.wespeaker.registry import register

    register()
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("ERROR: --device cuda: this torch build sees no CUDA device; use --device cpu (or auto)")
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if {"-h", "--help"} & set(args):
        args = ["--", "--help"]                 # fire's own help of extract(); a bare --help would run it
    with cpu_devices(extract) if on_cpu else contextlib.nullcontext():
        fire.Fire(extract.extract, command=args, name="extract")


def run_average(args: list[str]) -> None:
    """WeSpeaker's ``average_model.main()`` with its own argparse command line."""
    import wespeaker.bin.average_model as average

    saved = sys.argv
    sys.argv = ["average_model.py", *args]
    try:
        average.main()
    finally:
        sys.argv = saved


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    tool, rest = args[0], args[1:]
    if tool not in TOOLS:
        print(f"ERROR: unknown tool {tool!r}; choose one of {', '.join(TOOLS)}\n\n{usage()}", file=sys.stderr)
        return 2
    if tool == "extract":
        device, rest = pop_device(rest)
        run_extract(rest, device)
    else:
        run_average(rest)
    return 0


if __name__ == "__main__":
    from nawsv.utils.cli import run_main

    raise SystemExit(run_main(main))
