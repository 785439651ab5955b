"""`paretoserve report`: one self-contained HTML page comparing run folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from paretoserve.cli.app import app, console

REPORT_FILE = "report.html"


def default_out(runs: list[Path]) -> Path:
    """RUN/report.html for one run, else report.html in the current folder."""
    return runs[0] / REPORT_FILE if len(runs) == 1 else Path(REPORT_FILE)


@app.command("report")
def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (simulate, bench or validate).")],
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="HTML file to write [default: RUN/report.html for one run, else ./report.html].")
    ] = None,
    title: Annotated[str | None, typer.Option(
        "--title", help="Page title [default: from the run names].")] = None,
) -> None:
    """Write one self-contained HTML page (works offline) comparing the runs: summaries, latency CDFs,
    timelines, and per-request latency of one run against another for two runs of the same requests."""
    from paretoserve.report.html import runs_report
    from paretoserve.runs import read_run

    loaded = [read_run(path) for path in runs]
    page_title = title or "paretoserve report: " + ", ".join(run.path.name or str(run.path) for run in loaded)
    path = runs_report(loaded, title=page_title, out_path=out or default_out(runs))
    console.print(f"report written to {path}", highlight=False, soft_wrap=True, markup=False)
