"""One self-contained HTML page for `validate --points`: coverage and errors per group, predicted vs
measured mean TTFT and TPOT per group, the error distribution, and the rows not represented."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from paretoserve.calibrate.point_replay import PointPrediction

_METRICS = (("ttft", "mean TTFT"), ("tpot", "mean TPOT"))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def _abs_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _group_name(entry: dict) -> str:
    return f"{entry['model']} · {entry['engine']} · {entry['mode']}"


def _table(summary: dict) -> str:
    head = ("group", "rows", "predicted", "coverage", "TTFT median |err|", "TTFT p90 |err|", "TTFT mean err",
            "TPOT median |err|", "TPOT p90 |err|", "TPOT mean err")
    rows = []
    for entry in [*summary["groups"], {"model": "all rows", "engine": "", "mode": "", **summary["overall"]}]:
        name = _group_name(entry) if entry["engine"] else "all rows"
        cells = [name, entry["rows"], entry["predicted"], f"{entry['coverage']:.0%}"]
        for metric, _ in _METRICS:
            stats = entry[metric]
            cells += [_abs_pct(stats["median_abs"]), _abs_pct(stats["p90_abs"]), _pct(stats["mean_signed"])]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


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


def points_page(predictions: Sequence[PointPrediction], summary: dict, *, title: str, step_model: str) -> str:
    """The whole page as HTML text (plotly.js inline, so it opens offline)."""
    reasons = "".join(f"<tr><td>{count}</td><td>{html.escape(reason)}</td></tr>"
                      for reason, count in summary["unsupported"].items())
    figure = _figures(predictions).to_html(include_plotlyjs=True, full_html=False, div_id="points")
    overall = summary["overall"]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:1.5em;color:#1f2933}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #cbd2d9;padding:.3em .6em;"
        "text-align:right}td:first-child,th:first-child{text-align:left}.note{color:#52606d}</style>",
        "</head><body>", f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Predicted (estimated by simulation, {html.escape(step_model)}) against measured mean '
        f"TTFT and TPOT; error = (predicted − measured) / measured. {overall['predicted']} of {overall['rows']} "
        f"rows represented ({overall['coverage']:.0%}); the rest are listed below with the reason.</p>",
        "<h2>Errors by group (model · engine · mode)</h2>", _table(summary),
        "<h2>Predicted vs measured</h2>", figure,
        "<h2>Rows not represented</h2>",
        f"<table><thead><tr><th>rows</th><th>what the model lacks</th></tr></thead><tbody>{reasons}</tbody></table>",
        "</body></html>", ""])
