"""Shared plumbing for ``python -m nawsv.bin.<stage>`` entry points."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from nawsv.utils.errors import NawsvError

log = logging.getLogger("nawsv")


def setup_logging(verbose: bool = False) -> None:
    """Kaldi-like log lines on stderr: ``LOG (nawsv.bin.score) message``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s (%(name)s) %(message)s"))
    root = logging.getLogger("nawsv")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    logging.addLevelName(logging.INFO, "LOG")


class StageParser(argparse.ArgumentParser):
    """argparse whose usage errors look like every other user error: one ``ERROR:`` line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ERROR: {self.prog}: {message} (see {self.prog} --help)\n")


def str2bool(text: str) -> bool:
    """Parse Kaldi-style booleans (``true``/``false``) for argparse."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts such as --nj."""
    return _int_at_least(text, 1, "a positive integer")


def job_index(text: str) -> int:
    """argparse type for --job: 0 .. num_jobs-1, as Slurm array tasks are usually numbered."""
    return _int_at_least(text, 0, "a job index >= 0")


def add_config_options(parser: argparse.ArgumentParser, config_help: str, example: str) -> None:
    """``--config`` (the stage YAML) and repeatable ``--override KEY=VALUE``, alike on every stage."""
    parser.add_argument("--config", type=Path, help=config_help)
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key, e.g. --override {example} (repeatable)")


def add_job_options(parser: argparse.ArgumentParser, shares: str, merge: str | None = None) -> None:
    """``--job i --num_jobs n`` (a Slurm array's share of the work) and, when given, ``--merge``.

    A stage that merges also takes ``--array_first``, so that its messages name the array index to rerun.
    """
    parser.add_argument("--job", type=job_index, default=0, help="this job's index, 0 .. num_jobs-1")
    parser.add_argument("--num_jobs", type=positive_int, default=1,
                        help=f"number of jobs sharing the work (e.g. a Slurm array); {shares}")
    if merge:
        parser.add_argument("--merge", type=str2bool, default=False, help=merge)
        parser.add_argument("--array_first", type=job_index, default=0,
                            help="the Slurm array index of job 0 (tools/slurm sets it); messages about missing "
                                 "parts then name the array index to rerun")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every stage accepts."""
    parser.add_argument("--verbose", type=str2bool, default=False, help="debug logging (true/false)")


def _printable(text: str) -> str:
    """``text`` with bytes of non-UTF-8 file names shown as ``\\xe9`` escapes, printable on any stream."""
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main`` turning user errors into one ``ERROR:`` line and a non-zero exit code."""
    try:
        return main(argv)
    except NawsvError as exc:
        print(f"ERROR: {_printable(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return 130
