"""YAML records that stages write beside their outputs (condition.yaml, export config, extraction stamp).

They are read back to reuse or check earlier work, so a damaged or foreign record must be an error that
names the file and says how to rebuild it, never a traceback or a silent mix of two runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from nawsv.utils.errors import DataError


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: where it is and what is wrong (PyYAML's own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + " ".join(str(getattr(exc, "problem", None) or exc).split())


def read_record(path: Path, kind: str, fix: str, valid: Callable[[dict], bool]) -> dict[str, Any] | None:
    """The mapping in ``path``, or None when the file does not exist.

    ``kind`` names what the file should be ("a nawsv export config") and ``fix`` the remedy; both go into
    the DataError raised for unreadable YAML or a mapping that ``valid`` rejects.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc}); {fix}") from None
    except yaml.YAMLError as exc:
        raise DataError(f"{path} is not valid YAML ({yaml_problem(exc)}); {fix}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not valid YAML (not UTF-8: {exc.reason} at byte {exc.start}); {fix}") from None
    if not isinstance(data, dict) or not valid(data):
        raise DataError(f"{path} is not {kind}; {fix}")
    return data
