"""`paretoserve validate --points FILE.csv`: predict a table of measured serving points."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import typer
from rich.table import Table

from paretoserve.calibrate.point_replay import COLLECTED, STEADY, PointPrediction, error_summary, predict_points
from paretoserve.calibrate.points import map_row, parse_where, read_points, select, with_twin_worker_counts
from paretoserve.cli.app import console
from paretoserve.errors import UserError
from paretoserve.outputs import building_folder, claim_folder

PREDICTIONS_FILE = "predictions.csv"
#: The command named in the output folder's marker (`paretoserve.outputs`).
OUT_COMMAND = "validate --points"


def predictions_csv(predictions: list[PointPrediction]) -> str:
    """predictions.csv: the input's id, predicted mean TTFT and TPOT in ms (empty where the row is not
    represented) and the reason it is not."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "predicted_ttft_ms", "predicted_tpot_ms", "unsupported_reason"])
    for p in predictions:
        writer.writerow([p.point.id, "" if p.ttft_s is None else f"{p.ttft_s * 1e3:.6g}",
                         "" if p.tpot_s is None else f"{p.tpot_s * 1e3:.6g}", p.point.unsupported or ""])
    return buffer.getvalue()


def _pct(value: float | None, signed: bool = False) -> str:
    return "—" if value is None else f"{value:+.1%}" if signed else f"{value:.1%}"


def summary_table(summary: dict, title: str) -> Table:
    """Coverage and errors per group and overall."""
    table = Table(title=title, title_justify="left")
    for col in ("model · engine · mode", "rows", "cover", "TTFT med", "p90", "mean", "TPOT med", "p90", "mean"):
        table.add_column(col, justify="left" if col.startswith("model") else "right")
    entries = [(f"{g['model']} · {g['engine']} · {g['mode']}", g) for g in summary["groups"]]
    for index, (name, entry) in enumerate([*entries, ("all rows", summary["overall"])]):
        cells = [name, str(entry["rows"]), f"{entry['coverage']:.0%}"]
        for metric in ("ttft", "tpot"):
            stats = entry[metric]
            cells += [_pct(stats["median_abs"]), _pct(stats["p90_abs"]), _pct(stats["mean_signed"], True)]
        table.add_row(*cells, end_section=index == len(entries) - 1)
    return table


def validate_points(points: Path, *, where: str | None, profile: Path | None, out: Path | None,
                    as_json: bool, steady_state: bool = False) -> None:
    """Map, predict and summarise the rows of `points` (see `paretoserve.calibrate.points`), replayed
    as collected or, with `steady_state`, as the steady-state closed loop
    (`paretoserve.calibrate.point_replay`)."""
    inputs = (points, profile)
    if out is not None:  # before the predictions: a new folder or an earlier one of this command
        claim_folder(out, OUT_COMMAND, inputs=inputs)
    rows = select(with_twin_worker_counts(read_points(points)), parse_where(where), str(points))
    if not rows:
        raise UserError(f"no row of {points} matches --where {where!r}", field="where")
    deployments = [map_row(row, line, str(points)) for line, row in rows]
    protocol = STEADY if steady_state else COLLECTED
    predictions = predict_points(deployments, profile=str(profile) if profile else None, protocol=protocol)
    summary = error_summary(predictions)
    step_model = f"calibrated profile {profile}" if profile else "datasheet roofline"
    summary = {"estimated": True, "points": str(points), "where": where, "step_model": step_model,
               "protocol": protocol.name, **summary}
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        console.print(summary_table(summary, f"Predicted ({step_model}) vs measured mean TTFT/TPOT of {points.name}: "
                                             "|error| median and p90, mean signed error"))
        console.print(f"[dim]replayed {protocol.name}[/]", highlight=False)
        if summary["unsupported"]:
            console.print("[bold]not represented yet[/] (rows · what the model lacks; a row may lack several, "
                          f"see {PREDICTIONS_FILE}):")
            for reason, count in summary["unsupported"].items():
                console.print(f"  {count:>4} · {reason}")
    if out is None:
        return
    from paretoserve.report.points_page import points_report

    with building_folder(out, OUT_COMMAND, inputs=inputs) as tmp:
        (tmp / PREDICTIONS_FILE).write_text(predictions_csv(predictions), encoding="utf-8")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        points_report(predictions, summary, title=f"Measured points: {points.name}",
                      step_model=f"{step_model}, replayed {protocol.name}", out_path=tmp / "report.html")
    if not as_json:
        console.print(f"wrote {out / PREDICTIONS_FILE}, {out / 'summary.json'} and {out / 'report.html'}")
