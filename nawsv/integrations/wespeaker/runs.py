"""Phase 2 as a chain of WeSpeaker runs, linked as WeSpeaker's own ``examples/voxceleb/v2/run_wavlm.sh`` links them.

``run_wavlm.sh`` starts run k+1 from run k's ``avg_model.pt`` (WeSpeaker's ``average_model.py`` over run k's last
``num_avg`` epochs), copied to ``<run k+1>/models/model_0.pt`` and passed as ``--checkpoint``: WeSpeaker then
restores the front-end, the speaker model *and* the projection (the AAM head) and counts epochs from 1, where
``--model_init`` would drop the projection. WeSpeaker's checkpoints hold the model only, so each run starts a new
optimiser and takes its margin and LR schedule from its own config, as upstream.

:func:`checkpoint_for` says what the next launch of a run needs. Every node of a multi-node job calls it before
its torchrun meets the others; what it writes is written by atomic renames of identical bytes, so the calls may
overlap. CLI (used by ``tools/wespeaker_phase2.sh``)::

    python -m nawsv.integrations.wespeaker.runs prepare RUN_DIR [PREVIOUS_RUN_DIR]  # prints done | <ckpt> | nothing
    python -m nawsv.integrations.wespeaker.runs average RUN_DIR                      # prints the avg_model.pt path
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from nawsv.utils.errors import ExperimentError

DONE = "done"


def epoch_of(path: Path) -> int | None:
    """The epoch of a WeSpeaker checkpoint name ``model_<N>.pt`` (its own pattern), else ``None``."""
    found = re.fullmatch(r"model_(\d+)\.pt", path.name)
    return int(found.group(1)) if found else None


def newest_checkpoint(models: Path) -> Path | None:
    epochs = {epoch_of(path): path for path in models.glob("model_*.pt")} if models.is_dir() else {}
    epochs.pop(None, None)
    return epochs[max(epochs)] if epochs else None


def _temporary(path: Path) -> Path:
    """A name beside ``path`` that no other process (here or on another node) uses, and no ``*.pt`` glob matches."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def average(run_dir: Path) -> Path:
    """``<run_dir>/models/avg_model.pt`` by WeSpeaker's ``average_model.py`` over the run's last ``num_avg`` epochs."""
    models = Path(run_dir) / "models"
    target = models / "avg_model.pt"
    if target.exists():
        return target
    num_avg = int(yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["num_avg"])
    partial = _temporary(target)
    proc = subprocess.run([sys.executable, "-m", "wespeaker.bin.average_model", "--dst_model", str(partial),
                           "--src_path", str(models), "--num", str(num_avg)], capture_output=True, text=True)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ExperimentError(f"WeSpeaker's average_model.py failed on {models} (num_avg {num_avg}): "
                              f"{proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    os.replace(partial, target)
    return target


def checkpoint_for(run_dir: Path, previous: Path | None = None) -> str | None:
    """What to launch ``run_dir`` with: :data:`DONE`, a ``--checkpoint`` path, or ``None`` (a fresh first run).

    A run with epoch checkpoints resumes from its newest (``model_0.pt``, the previous run's average, included).
    A run that died before its first save left an empty ``models/`` (WeSpeaker's rank 0 makes it first), over
    which WeSpeaker refuses to start: it is removed. Anything else there is kept and reported.
    """
    models = Path(run_dir) / "models"
    if (models / "final_model.pt").exists():
        return DONE
    newest = newest_checkpoint(models)
    if newest is not None:
        return str(newest.absolute())
    if models.is_dir() and previous is None:
        leftovers = sorted(path.name for path in models.iterdir())
        if leftovers:
            raise ExperimentError(f"{models} holds {leftovers} but no model_<N>.pt to resume from; move it away "
                                  f"to train {run_dir} again")
        models.rmdir()                   # the trace of a run that died before its first epoch
    if previous is None:
        return None
    source = average(Path(previous))
    models.mkdir(parents=True, exist_ok=True)
    start = models / "model_0.pt"
    partial = _temporary(start)
    shutil.copyfile(source, partial)
    os.replace(partial, start)
    return str(start.absolute())


def main(argv: list[str]) -> int:
    usage = "usage: python -m nawsv.integrations.wespeaker.runs prepare RUN_DIR [PREVIOUS] | average RUN_DIR"
    if len(argv) < 2 or argv[0] not in ("prepare", "average") or len(argv) > (3 if argv[0] == "prepare" else 2):
        print(usage, file=sys.stderr)
        return 2
    try:
        if argv[0] == "average":
            print(average(Path(argv[1])))
        else:
            print(checkpoint_for(Path(argv[1]), Path(argv[2]) if len(argv) > 2 else None) or "")
    except ExperimentError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
