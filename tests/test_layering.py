"""Import layering: scoring depends on neither data preparation nor training; formats depend on utils only.

Imports are read from the source with ``ast`` (function-level imports included), so a lazy import inside a
function breaks the rule as much as a top-level one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "nawsv"
RULES = {                                   # package -> prefixes none of its modules may import
    "scoring": ("nawsv.data", "nawsv.train"),
    "formats": ("nawsv.data", "nawsv.train", "nawsv.extract", "nawsv.scoring", "nawsv.models", "nawsv.losses"),
}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for name in sorted(imported_modules(path)):
            if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden):
                out.append(f"{path.relative_to(ROOT)} imports {name}")
    return out


@pytest.mark.parametrize("package", sorted(RULES))
def test_layering(package: str) -> None:
    assert violations(package, RULES[package]) == []


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from nawsv.data.kaldi import read_table\n    import nawsv.train.loop\n")
    assert {"nawsv.data.kaldi", "nawsv.data.kaldi.read_table", "nawsv.train.loop"} <= imported_modules(source)
