"""Shared plumbing for ``python -m nawsv.bin.<stage>`` entry points."""
from __future__ import annotations

import argparse
import logging
import os
import sys
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


def positive_int(text: str) -> int:
    """argparse type for counts such as --nj."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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
