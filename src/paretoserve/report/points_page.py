"""One self-contained HTML page for `validate --points`: coverage and errors per group, predicted vs
measured mean TTFT and TPOT per group, the error distribution, and the rows not represented."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from paretoserve.calibrate.point_replay import PointPrediction
from paretoserve.report.html import figure_markup, render_page

_METRICS = (("ttft", "mean TTFT"), ("tpot", "mean TPOT"))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def _abs_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _group_name(entry: dict) -> str:
    return f"{entry['model']} · {entry['engine']} · {entry['mode']}"


_HEADER = ("group", "rows", "predicted", "coverage", "TTFT median |err|", "TTFT p90 |err|", "TTFT mean err",
           "TPOT median |err|", "TPOT p90 |err|", "TPOT mean err")


def _rows(summary: dict) -> list[list[object]]:
    """One table row per group, then all rows together."""
    rows = []
    for entry in [*summary["groups"], {"model": "all rows", "engine": "", "mode": "", **summary["overall"]}]:
        name = _group_name(entry) if entry["engine"] else "all rows"
        cells: list[object] = [name, entry["rows"], entry["predicted"], f"{entry['coverage']:.0%}"]
        for metric, _ in _METRICS:
            stats = entry[metric]
            cells += [_abs_pct(stats["median_abs"]), _abs_pct(stats["p90_abs"]), _pct(stats["mean_signed"])]
        rows.append(cells)
    return rows


def _figures(predictions: Sequence[PointPrediction]) -> go.Figure:
    fig = make_subplots(rows=2, cols=2, vertical_spacing=0.14, horizontal_spacing=0.1,
                        subplot_titles=["predicted vs measured mean TTFT", "predicted vs measured mean TPOT",
                                        "TTFT error distribution", "TPOT error distribution"])
    groups: dict[str, list[PointPrediction]] = {}
    for p in predictions:
        if p.ttft_s is not None:
            groups.setdefault(" · ".join(p.point.group), []).append(p)
    for col, (metric, title) in enumerate(_METRICS, start=1):
        values = [getattr(p.point, f"measured_{metric}_s") * 1e3 for ps in groups.values() for p in ps]
        values += [getattr(p, f"{metric}_s") * 1e3 for ps in groups.values() for p in ps]
        if values:
            low, high = min(values) * 0.8, max(values) * 1.25
            fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", name="y = x",
                                     showlegend=col == 1, line={"dash": "dash", "color": "#7b8794"}),
                          row=1, col=col)
        for index, (name, items) in enumerate(groups.items()):
            colour = f"hsl({(index * 67) % 360},60%,45%)"
            fig.add_trace(go.Scatter(
                x=[getattr(p.point, f"measured_{metric}_s") * 1e3 for p in items],
                y=[getattr(p, f"{metric}_s") * 1e3 for p in items], mode="markers", name=name,
                legendgroup=name, showlegend=col == 1, marker={"color": colour, "size": 7, "opacity": 0.7},
                text=[p.point.id for p in items],
                hovertemplate="%{text}<br>measured %{x:,.1f} ms<br>predicted %{y:,.1f} ms<extra></extra>"),
                row=1, col=col)
            fig.add_trace(go.Histogram(x=[p.error(metric) * 100 for p in items], name=name, legendgroup=name,
                                       showlegend=False, marker={"color": colour}, opacity=0.6, nbinsx=30),
                          row=2, col=col)
        fig.update_xaxes(type="log", title_text=f"measured {title}, ms", row=1, col=col)
        fig.update_yaxes(type="log", title_text=f"predicted {title}, ms", row=1, col=col)
        fig.update_xaxes(title_text="(predicted − measured) / measured, %", row=2, col=col)
        fig.update_yaxes(title_text="rows", row=2, col=col)
    fig.update_layout(template="plotly_white", height=900, barmode="overlay",
                      legend={"orientation": "h", "yref": "container", "y": 1.0, "yanchor": "top"},
                      margin={"l": 70, "r": 30, "t": 110, "b": 50})
    return fig


def points_report(predictions: Sequence[PointPrediction], summary: dict, *, title: str, step_model: str,
                  out_path: str | Path) -> Path:
    """Write the page (self-contained: plotly.js inline, so it opens offline) and return its path."""
    return render_page("points.html.j2", out_path, title=title, badges=[True], step_model=step_model,
                       overall=summary["overall"], coverage=f"{summary['overall']['coverage']:.0%}",
                       header=_HEADER, rows=_rows(summary), unsupported=list(summary["unsupported"].items()),
                       figure=figure_markup(_figures(predictions), "points"))
