"""Run benchmarks: ``python -m bench`` (all but ``scale``), ``python -m bench prepare``, ``--quick`` for a smoke run.
``NAME:PART`` runs one part of a benchmark that has parts (``python -m bench scoring:bootstrap``).

Each benchmark prints its figures and, where it has a reference, the ratio; results also go to
bench/results/<name>.json. Numbers depend on the machine: compare ratios measured in the same run.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys

from bench.common import Unavailable, save

BENCHMARKS = {
    "prepare": "bench.bench_prepare",
    "noisy": "bench.bench_noisy",
    "scoring": "bench.bench_scoring",
    "models": "bench.bench_models",
    "extract": "bench.bench_extract",
    "train": "bench.bench_train",
    "gpu": "bench.bench_gpu",
    "ddp": "bench.bench_ddp",
    "scale": "bench.bench_scale",
}
ON_REQUEST = {"scale"}           # heavy (a VoxCeleb2-size tree): run only when named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*",
                        help=f"benchmarks to run (default: all but {', '.join(sorted(ON_REQUEST))}): "
                             f"{', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="smaller workloads, for a smoke test")
    parser.add_argument("--fraction", type=float, default=None,
                        help="scale: run at this fraction of the real sizes (default 1; --quick: 0.01)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n.partition(":")[0] not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    print(f"# machine: {platform.machine()} {os.cpu_count()} cpu(s), python {platform.python_version()}")
    status = 0
    for name in args.names or [n for n in BENCHMARKS if n not in ON_REQUEST]:
        print(f"## {name}")
        bench, _, part = name.partition(":")
        module = importlib.import_module(BENCHMARKS[bench])
        if part and part not in getattr(module, "PARTS", ()):
            parser.error(f"benchmark {bench!r} has no part {part!r}; parts: {list(getattr(module, 'PARTS', ()))}")
        try:
            figures = module.run(args, (part,)) if part else module.run(args)
        except Unavailable as exc:                 # e.g. the GPU benchmark on a CPU-only machine
            print(f"# {name} not run: {exc}", file=sys.stderr, flush=True)
            status = 2 if name in args.names else status
            continue
        for figure in figures:
            print(figure.line(), flush=True)
        print(f"# saved {save(name.replace(':', '_'), figures)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
