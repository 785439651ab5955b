"""Layers import only downward (DESIGN §2): catalog → perf → sim → metrics → (calibrate, plan) → report
→ cli. Every import statement counts, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import paretoserve

SRC = Path(paretoserve.__file__).parent
#: package -> the packages it must never import (the before-stop hook's rule, and metrics too).
FORBIDDEN = {
    "catalog": {"calibrate", "plan", "report", "cli", "bench"},
    "perf": {"calibrate", "plan", "report", "cli", "bench"},
    "sim": {"plan", "report", "cli", "bench", "calibrate"},
    "metrics": {"plan", "report", "cli", "bench", "calibrate"},
    "plan": {"report", "cli"},
    "calibrate": {"report", "cli"},
}


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, second component) of every `paretoserve.X...` module imported anywhere in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [(node.lineno, name.split(".")[1]) for name in names
                  if name.startswith("paretoserve.") and name.count(".") >= 1]
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_up_the_layers(package: str) -> None:
    upward = [f"{path.relative_to(SRC)}:{line} imports paretoserve.{target}"
              for path in sorted((SRC / package).rglob("*.py"))
              for line, target in _imported(path) if target in FORBIDDEN[package]]
    assert upward == []


def test_the_check_sees_function_level_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from paretoserve.report.html import plan_report\n", encoding="utf-8")
    assert _imported(source) == [(2, "report")]
