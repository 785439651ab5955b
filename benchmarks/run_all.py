"""Run every benchmark module in this folder (`bench_*.py`) and print one table each.

Each module exposes `run() -> list[dict]`; a row has `name`, `value`, `unit`, and optionally
`baseline` (a figure measured in the same run), `ratio` (value / baseline) and `note`.
Select modules with `python benchmarks/run_all.py roofline sim` (substring match).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).parent


def print_rows(title: str, rows: list[dict], console: Console) -> None:
    """Print one benchmark's rows as a table."""
    table = Table(title=title, title_justify="left")
    for col in ("measure", "value", "unit", "baseline", "ratio", "note"):
        table.add_column(col, justify="right" if col in ("value", "baseline", "ratio") else "left")
    for row in rows:
        table.add_row(row["name"], _fmt(row.get("value")), row.get("unit", ""), _fmt(row.get("baseline")),
                      _fmt(row.get("ratio")), row.get("note", ""))
    console.print(table)


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def main(argv: list[str]) -> int:
    console = Console(width=max(150, Console().width))
    modules = sorted(HERE.glob("bench_*.py"))
    if argv:
        modules = [m for m in modules if any(a in m.stem for a in argv)]
    for path in modules:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        assert spec.loader is not None
        spec.loader.exec_module(module)
        start = time.perf_counter()
        rows = module.run()
        print_rows(f"{path.stem} ({time.perf_counter() - start:.1f} s)", rows, console)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
