"""Self-contained HTML pages (plotly): the plan-search report and the comparison of run folders.

Each page is one file that works offline: plotly.js is embedded once, inline, in the page head, and
every figure after it is a ``<div>`` plus a small script that draws into it (no CDN, no network).
Values are SI in the data; milliseconds only on the page. Numbers from the simulator are labelled
"estimated by simulation", numbers from a real server "measured".

- `plan_report`: the Pareto front of a plan search (cost vs TTFT and cost vs energy), the ranked front
  with the command that reproduces each plan's simulation, the recommended plan and its reasons, and
  that plan's simulated latency CDFs and timelines.
- `runs_report`: any number of run folders side by side: summary table, overlaid latency CDFs,
  timelines, and per-request predicted vs measured latency when two runs share request ids.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.offline
import pyarrow as pa
import pyarrow.csv as pacsv
import yaml
from plotly.subplots import make_subplots
from pydantic import ValidationError

from paretoserve.atomic import write_text_atomic
from paretoserve.errors import UserError
from paretoserve.metrics.records import RequestRecord
from paretoserve.metrics.slo import Slo, parse_slo
from paretoserve.metrics.summary import Summary, summarize
from paretoserve.outputs import Inputs, claim_file, write_errors
from paretoserve.plan.pareto import pareto_mask
from paretoserve.runs import CONFIG_FILE, REQUESTS_FILE, SUMMARY_FILE, Run

ITERATIONS_FILE = "iterations.csv"
#: In the head of every page: how an existing file is known to be a paretoserve report (and replaceable).
REPORT_MARKER = '<meta name="generator" content="paretoserve">'
_ITERATION_COLUMNS = ("replica", "start_s", "duration_s", "kv_used", "waiting", "running")

_DASH = "–"
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
            "#7f7f7f", "#bcbd22")
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "pentagon", "hexagon", "cross", "triangle-down")
_CDF_POINTS = 400  # points per CDF curve (the curve of a large run is sampled at this many ranks)
_TIMELINE_BINS = 120
_SCATTER_POINTS = 5000  # at most this many requests in the predicted-vs-measured scatter
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_LOG_RATIO = 30.0  # an axis spanning more than this factor is drawn on a log scale

_CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f5f7fa; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:#fff; border-bottom:1px solid var(--line); padding:20px 32px; }
header h1 { margin:0 0 4px; font-size:22px; }
header p { margin:2px 0; color:var(--muted); }
main { max-width:1320px; margin:0 auto; padding:8px 32px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; margin:20px 0;
          padding:16px 20px; }
section h2 { margin:0 0 4px; font-size:17px; }
section .note { color:var(--muted); margin:0 0 10px; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600;
         margin-right:6px; vertical-align:middle; }
.estimated { background:#fff4e0; color:#9a5b00; border:1px solid #f0c98a; }
.measured { background:#e3f6ea; color:#1d6b3a; border:1px solid #9ed4b1; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
table.compact { width:auto; min-width:50%; }
table.compact td, table.compact th { padding:4px 16px; }
th, td { padding:5px 8px; border-bottom:1px solid var(--line); text-align:right; vertical-align:top; }
th { background:#f9fafb; font-weight:600; color:#3e4c59; position:sticky; top:0; }
th:first-child, td:first-child, td.text, th.text { text-align:left; }
tr.recommended td { background:#fff8f0; }
tr.command td { border-bottom:2px solid var(--line); padding-top:0; }
code, pre { font-family:"SFMono-Regular", Menlo, Consolas, monospace; font-size:12px; }
code.cmd { display:inline-block; background:#f3f4f6; border:1px solid var(--line); border-radius:4px;
           padding:2px 6px; white-space:pre-wrap; word-break:break-all; }
button.copy { font-size:11px; margin-left:6px; padding:1px 6px; cursor:pointer; border:1px solid #cbd2d9;
              background:#fff; border-radius:4px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:10px 0; }
.card { border:1px solid var(--line); border-radius:6px; padding:8px 14px; min-width:130px; }
.card .value { font-size:18px; font-weight:600; }
.card .label { color:var(--muted); font-size:12px; }
ul.reasons { margin:6px 0 10px 18px; padding:0; }
details pre { background:#f9fafb; border:1px solid var(--line); padding:8px; overflow:auto;
              max-height:320px; }
.mark { color:#c2410c; font-weight:600; }
table.front td:nth-child(2), table.front th:nth-child(2) { text-align:left; }
"""

_COPY_SCRIPT = """
function copyCode(button) {
  var text = button.previousElementSibling.textContent;
  if (navigator.clipboard) {
    navigator.clipboard.writeText(text).then(function () { button.textContent = "copied"; },
                                             function () { button.textContent = "select + copy"; });
  }
}
"""


# ------------------------------------------------------------------------------------------------
# Page building blocks
# ------------------------------------------------------------------------------------------------

def _esc(text: object) -> str:
    """`text` escaped for HTML."""
    return html.escape(str(text), quote=True)


def _badge(estimated: bool) -> str:
    """The "estimated by simulation" or "measured" label."""
    if estimated:
        return '<span class="badge estimated">estimated by simulation</span>'
    return '<span class="badge measured">measured</span>'


def _version() -> str:
    """The installed paretoserve version, or "dev" when not installed."""
    try:
        return metadata.version("paretoserve")
    except metadata.PackageNotFoundError:
        return "dev"


def _page(title: str, what: str, badges: str, sections: Sequence[str]) -> str:
    """The whole HTML document: head with CSS and plotly.js (once), header, then `sections`."""
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', REPORT_MARKER,
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>", f"<style>{_CSS}</style>",
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>",
        f"<script>{plotly.offline.get_plotlyjs()}</script>",
        f"<script>{_COPY_SCRIPT}</script>", "</head>", "<body>",
        f"<header><h1>{_esc(title)}</h1><p>{what}</p>",
        f"<p>{badges} made {_esc(made)} by paretoserve {_esc(_version())}</p></header>",
        "<main>", *sections, "</main>", "</body>", "</html>", ""])


def _section(heading: str, body: str, note: str | None = None) -> str:
    """A titled panel; `body` and `note` are HTML."""
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f"<section><h2>{_esc(heading)}</h2>{note_html}{body}</section>"


def _figure(fig: go.Figure, div_id: str) -> str:
    """The figure as a div drawn by an inline script (plotly.js is already in the page head)."""
    return fig.to_html(include_plotlyjs=False, full_html=False, div_id=div_id, config=_PLOT_CONFIG)


def _table(header: Sequence[str], rows: Sequence[str], css_class: str | None = None) -> str:
    """A table with escaped `header` cells and `rows` given as ready ``<tr>`` HTML."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    attr = f' class="{css_class}"' if css_class else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _row(cells: Sequence[str], css_class: str | None = None) -> str:
    """One ``<tr>`` of ready HTML cells."""
    attr = f' class="{css_class}"' if css_class else ""
    return f"<tr{attr}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _command(command: str) -> str:
    """A copyable shell command."""
    return (f'<code class="cmd">{_esc(command)}</code>'
            '<button class="copy" type="button" onclick="copyCode(this)">copy</button>')


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    """`value` × `scale` formatted with `spec`, a dash for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _DASH
    return format(value if scale == 1.0 else value * scale, spec)


def _ms(value_s: float | None) -> str:
    """Seconds as milliseconds text."""
    return _fmt(value_s, ",.1f", 1e3)


def _axis_type(values: Sequence[float]) -> str:
    """"log" when the positive `values` span more than `_LOG_RATIO`, else "linear"."""
    positive = [v for v in values if v is not None and v > 0]
    if len(positive) < 2 or max(positive) / min(positive) <= _LOG_RATIO:
        return "linear"
    return "log"


def _layout(fig: go.Figure, *, height: int, legend_below: bool = False) -> go.Figure:
    """Common look: white template, compact margins, a horizontal legend at the top of the figure (above
    any subplot titles) or, with `legend_below`, at its bottom (clear of a colour bar on the right)."""
    legend = {"orientation": "h", "x": 0, "yref": "container", "y": 0.0 if legend_below else 1.0,
              "yanchor": "bottom" if legend_below else "top"}
    margin = {"l": 70, "r": 30, "t": 30, "b": 130} if legend_below else {"l": 70, "r": 30, "t": 70, "b": 50}
    fig.update_layout(template="plotly_white", height=height, hovermode="closest", legend=legend,
                      margin=margin)
    return fig


# ------------------------------------------------------------------------------------------------
# Plan report
# ------------------------------------------------------------------------------------------------

def _plan_config(plan: dict[str, Any]) -> str:
    """One-line description of a plan's configuration (parallelism, batching, dtypes, policy)."""
    disagg = plan.get("disagg")
    if disagg:
        prefill, decode = disagg["prefill"], disagg["decode"]
        layout = (f"P {prefill['replicas']}×tp{prefill['tp']} / D {decode['replicas']}×tp{decode['tp']}"
                  f" pp{plan.get('pp', 1)}")
    else:
        layout = f"tp{plan.get('tp', 1)} pp{plan.get('pp', 1)} dp{plan.get('dp', 1)}"
    return (f"{plan.get('device', '?')} {layout} · seqs {plan.get('max_num_seqs', _DASH)} · "
            f"batched tok {plan.get('max_num_batched_tokens', _DASH)} · W {plan.get('weight_dtype', _DASH)} "
            f"KV {plan.get('kv_dtype', _DASH)} · {plan.get('policy', _DASH)} · {plan.get('router', _DASH)}")


def _device_type(plan: dict[str, Any]) -> str:
    """The plan's device type name."""
    return str(plan["plan"].get("device", "?"))


def _hover(plan: dict[str, Any]) -> list[Any]:
    """customdata for one plan's hover text (see `_HOVER`)."""
    return [plan["label"], plan["devices"], _fmt(plan.get("usd_per_million_tokens"), ",.3f"),
            _ms(plan.get("ttft_p90_s")), _ms(plan.get("tpot_p90_s")), _ms(plan.get("e2e_p90_s")),
            _fmt(plan.get("joules_per_token"), ".3g"), _fmt(plan.get("goodput_rps"), ",.2f"),
            _fmt(plan.get("usd_per_hour"), ",.2f"), _fmt(plan.get("slo_attainment"), ".1%")]


_HOVER = ("<b>%{customdata[0]}</b><br>devices %{customdata[1]}<br>$/M tok %{customdata[2]}"
          "<br>TTFT p90 %{customdata[3]} ms<br>TPOT p90 %{customdata[4]} ms<br>E2E p90 %{customdata[5]} ms"
          "<br>J/tok %{customdata[6]}<br>goodput %{customdata[7]} req/s<br>$/h %{customdata[8]}"
          "<br>SLO attainment %{customdata[9]}<extra></extra>")


def _marker_size(devices: int) -> float:
    """Marker size growing with the number of devices."""
    return 7.0 + 3.0 * math.sqrt(max(devices, 1))


@dataclass(frozen=True)
class _Axis:
    """One plotted figure of a plan: the dict key, the axis title, and the scale to display it."""

    key: str
    title: str
    scale: float = 1.0

    def value(self, plan: dict[str, Any]) -> float | None:
        """The plan's value on this axis (display units), None when it has none."""
        raw = plan.get(self.key)
        return None if raw is None else raw * self.scale


_COST = _Axis("usd_per_million_tokens", "cost ($ per million output tokens)")
_TTFT = _Axis("ttft_p90_s", "TTFT p90 (ms)", 1e3)
_ENERGY = _Axis("joules_per_token", "energy (J per output token)")


def _plan_trace(plans: list[dict[str, Any]], y: _Axis, symbols: dict[str, str], *, name: str, style: str,
                tpot_range_ms: tuple[float, float]) -> go.Scatter:
    """The scatter of `plans`: colour = TPOT p90 on a scale shared by all traces (`tpot_range_ms`, shown
    by the front's trace), symbol = device type, size = devices. `style`: "front", "other", "infeasible".

    Each trace carries its own colour scale with the same bounds rather than a layout colour axis, whose
    numeric colours the legend of plotly.js 4 reads as invalid colour names (a console warning).
    """
    marker: dict[str, Any] = {
        "symbol": [symbols[_device_type(p)] for p in plans],
        "size": [_marker_size(p["devices"]) for p in plans],
    }
    if style == "infeasible":
        marker.update(color="#b0b7c3", opacity=0.55, line={"width": 0})
    else:
        tpot_ms = [None if p.get("tpot_p90_s") is None else p["tpot_p90_s"] * 1e3 for p in plans]
        marker.update(color=tpot_ms, colorscale="Viridis", cmin=tpot_range_ms[0], cmax=tpot_range_ms[1],
                      showscale=style == "front", colorbar={"title": {"text": "TPOT p90<br>(ms)"}},
                      opacity=1.0 if style == "front" else 0.45,
                      line={"width": 1.6 if style == "front" else 0, "color": "#111"})
    return go.Scatter(x=[_COST.value(p) for p in plans], y=[y.value(p) for p in plans], mode="markers",
                      name=name, marker=marker, customdata=[_hover(p) for p in plans], hovertemplate=_HOVER)


def _plan_figure(plans: list[dict[str, Any]], y: _Axis, *, slo_s: float | None) -> go.Figure:
    """Plans in the (cost, `y`) plane: all plans, the front joined by a line, knee and recommended."""
    shown = [p for p in plans if _COST.value(p) is not None and y.value(p) is not None]
    symbols = {device: symbol for device, symbol in
               zip(sorted({_device_type(p) for p in shown}), itertools.cycle(_SYMBOLS), strict=False)}
    front = sorted((p for p in shown if p.get("pareto")), key=lambda p: (_COST.value(p), y.value(p)))
    fig = go.Figure()
    others = [p for p in shown if p.get("feasible") and not p.get("pareto")]
    groups = (("other feasible plans", "other", others),
              ("misses the SLO", "infeasible", [p for p in shown if not p.get("feasible")]),
              ("Pareto front", "front", front))
    tpots = [p["tpot_p90_s"] * 1e3 for p in shown if p.get("tpot_p90_s") is not None] or [0.0]
    for name, style, group in groups:
        if group:
            fig.add_trace(_plan_trace(group, y, symbols, name=name, style=style,
                                      tpot_range_ms=(min(tpots), max(tpots))))
    in_plane = [p for p, keep in zip(front, pareto_mask([(_COST.value(p), y.value(p)) for p in front]),
                                     strict=True) if keep]
    if len(in_plane) > 1:
        fig.add_trace(go.Scatter(x=[_COST.value(p) for p in in_plane], y=[y.value(p) for p in in_plane],
                                 mode="lines", name="trade-off in this plane", hoverinfo="skip",
                                 line={"color": "#111", "width": 1, "dash": "dot", "shape": "hv"}))
    x_type = _axis_type([_COST.value(p) for p in shown])
    y_type = _axis_type([y.value(p) for p in shown])
    for plan in shown:
        _mark_plan(fig, plan, y, log_x=x_type == "log", log_y=y_type == "log")
    for device, symbol in symbols.items():  # legend entries for the symbols (no points of their own)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=device, legendgroup="devices",
                                 marker={"symbol": symbol, "size": 10, "color": "#52606d"}))
    if slo_s is not None:
        fig.add_hline(y=slo_s * y.scale, line={"color": "#d62728", "dash": "dash", "width": 1},
                      annotation_text="SLO", annotation_position="top left")
    fig.update_xaxes(title_text=_COST.title, type=x_type, dtick="D2" if x_type == "log" else None)
    fig.update_yaxes(title_text=y.title, type=y_type, dtick="D2" if y_type == "log" else None)
    return _layout(fig, height=600, legend_below=True)


def _mark_plan(fig: go.Figure, plan: dict[str, Any], y: _Axis, *, log_x: bool, log_y: bool) -> None:
    """Star the knee plan; ring and label the recommended plan (annotations take log10 positions on
    log axes)."""
    x_value, y_value = _COST.value(plan), y.value(plan)
    if plan.get("knee"):
        fig.add_trace(go.Scatter(x=[x_value], y=[y_value], mode="markers", name="knee", hoverinfo="skip",
                                 marker={"symbol": "star", "size": 20, "color": "#f5b700",
                                         "line": {"width": 1, "color": "#7a5b00"}}))
    if plan.get("recommended"):
        fig.add_trace(go.Scatter(x=[x_value], y=[y_value], mode="markers", name="recommended",
                                 hoverinfo="skip",
                                 marker={"symbol": "circle-open", "color": "#d62728", "line": {"width": 3},
                                         "size": _marker_size(plan["devices"]) + 16}))
        fig.add_annotation(x=math.log10(x_value) if log_x else x_value,
                           y=math.log10(y_value) if log_y else y_value,
                           text=f"recommended: {_esc(plan['label'])}", showarrow=True, arrowhead=2,
                           ax=40, ay=-40, font={"color": "#d62728"})


def _rank_key(plan: dict[str, Any]) -> tuple[bool, float, float]:
    """Front ranking: plans meeting the SLO first, then cheapest, then lowest TTFT p90."""
    cost = plan.get("usd_per_million_tokens")
    ttft = plan.get("ttft_p90_s")
    return (not plan.get("feasible"), math.inf if cost is None else cost, math.inf if ttft is None else ttft)


def _marks(plan: dict[str, Any]) -> str:
    """Recommended / knee / SLO marks for the table."""
    marks = [m for key, m in (("recommended", "★ recommended"), ("knee", "knee")) if plan.get(key)]
    if not plan.get("feasible"):
        marks.append("misses SLO")
    return f'<span class="mark">{_esc(", ".join(marks))}</span>' if marks else ""


_FRONT_HEADER = ("#", "plan", "devices", "max rate req/s", "goodput req/s", "$/h", "$/M tok", "TTFT p90 ms",
                 "TPOT p90 ms", "E2E p90 ms", "J/tok", "goodput/device", "goodput per $/h", "SLO att.")


def _front_rows(rank: int, plan: dict[str, Any]) -> list[str]:
    """The table row of one front plan and the row with its configuration and reproduce command."""
    cells = [str(rank), f"<b>{_esc(plan['label'])}</b> {_marks(plan)}", str(plan["devices"]),
             _fmt(plan.get("max_rate_rps"), ",.2f"), _fmt(plan.get("goodput_rps"), ",.2f"),
             _fmt(plan.get("usd_per_hour"), ",.2f"), _fmt(plan.get("usd_per_million_tokens"), ",.3f"),
             _ms(plan.get("ttft_p90_s")), _ms(plan.get("tpot_p90_s")), _ms(plan.get("e2e_p90_s")),
             _fmt(plan.get("joules_per_token"), ".3g"), _fmt(plan.get("goodput_per_device"), ",.3f"),
             _fmt(plan.get("goodput_per_usd_hour"), ",.3f"), _fmt(plan.get("slo_attainment"), ".1%")]
    css = "recommended" if plan.get("recommended") else None
    detail = (f'<td></td><td class="text" colspan="{len(_FRONT_HEADER) - 1}">'
              f"{_esc(_plan_config(plan['plan']))}<br>{_command(plan['command'])}</td>")
    return [_row(cells, css), f'<tr class="command">{detail}</tr>']


def _front_table(plans: list[dict[str, Any]]) -> str:
    """Ranked table of the front plans, each with its reproduce command."""
    front = sorted((p for p in plans if p.get("pareto")), key=_rank_key)
    rows = [row for rank, plan in enumerate(front, start=1) for row in _front_rows(rank, plan)]
    return _table(_FRONT_HEADER, rows, css_class="front")


def _card(label: str, value: str) -> str:
    """One headline figure."""
    return (f'<div class="card"><div class="value">{_esc(value)}</div>'
            f'<div class="label">{_esc(label)}</div></div>')


def _recommended_section(plan: dict[str, Any]) -> str:
    """The recommended plan: headline figures, reasons, configuration and reproduce command."""
    cards = "".join([
        _card("devices", str(plan["devices"])),
        _card("$ per million output tokens", _fmt(plan.get("usd_per_million_tokens"), ",.3f")),
        _card("goodput (req/s)", _fmt(plan.get("goodput_rps"), ",.2f")),
        _card("max rate (req/s)", _fmt(plan.get("max_rate_rps"), ",.2f")),
        _card("TTFT p90 (ms)", _ms(plan.get("ttft_p90_s"))),
        _card("TPOT p90 (ms)", _ms(plan.get("tpot_p90_s"))),
        _card("J per output token", _fmt(plan.get("joules_per_token"), ".3g")),
        _card("$ per hour", _fmt(plan.get("usd_per_hour"), ",.2f")),
    ])
    reasons = [line.strip(" -•") for line in str(plan.get("reason") or "").splitlines() if line.strip(" -•")]
    reasons_html = "".join(f"<li>{_esc(r)}</li>" for r in reasons) or f"<li>{_DASH}</li>"
    body = (f'<div class="cards">{cards}</div><b>Why</b><ul class="reasons">{reasons_html}</ul>'
            f"<p>{_esc(_plan_config(plan['plan']))}</p><p>{_command(plan['command'])}</p>")
    return _section(f"Recommended plan: {plan['label']}", body)


def plan_report(plans: list[dict[str, Any]], *, title: str, slo: str | None,
                recommended: dict[str, Any] | None, recommended_run: Run | None,
                out_path: str | Path) -> Path:
    """Write the HTML report of a plan search and return its path.

    Args:
        plans: every evaluated plan as a dict (keys: plan, label, devices, max_rate_rps, goodput_rps,
            usd_per_hour, usd_per_million_tokens, ttft_p90_s, tpot_p90_s, e2e_p90_s, joules_per_token,
            goodput_per_device, goodput_per_usd_hour, slo_attainment, feasible, pareto, knee,
            recommended, command, reason).
        title: the page title.
        slo: the SLO string of the search (drawn as a line on the TTFT view), None when none.
        recommended: the recommended plan dict, None when no plan meets the SLO.
        recommended_run: the simulated run of the recommended plan, for its CDFs and timelines.
        out_path: where to write the page (written atomically).
    """
    parsed_slo = parse_slo(slo) if slo else None
    front_count = sum(1 for p in plans if p.get("pareto"))
    feasible_count = sum(1 for p in plans if p.get("feasible"))
    what = (f"Deployment plan search: {len(plans)} plans evaluated, {feasible_count} meet the SLO, "
            f"{front_count} on the Pareto front (cost, latency, energy)."
            + (f" SLO: <code>{_esc(slo)}</code>." if slo else ""))
    ttft_slo = parsed_slo.ttft_s if parsed_slo else None
    sections = [
        _section("Pareto front: cost vs time to first token", _figure(
            _plan_figure(plans, _TTFT, slo_s=ttft_slo), "pareto-ttft"),
            note="Each point is a plan at the highest request rate at which it meets the SLO. "
                 "Colour: TPOT p90; symbol: device type; size: devices. Front plans are outlined; the dotted "
                 "staircase joins those that no plan beats on both axes shown. The star is the knee, the red "
                 "ring the recommended plan. "
                 "Hover a point for its figures; click legend entries to hide groups."),
        _section("Pareto front: cost vs energy", _figure(
            _plan_figure(plans, _ENERGY, slo_s=None), "pareto-energy"),
            note="Energy per output token at the same rates; the front is over cost, TTFT, TPOT and energy, "
                 "so in this plane some front plans are dominated."),
        _section("Front plans, ranked", _front_table(plans),
                 note="Ranked by cost per million output tokens (plans meeting the SLO first). The command "
                      "under each plan reproduces its simulation."),
    ]
    if recommended is not None:
        sections.append(_recommended_section(recommended))
    else:
        sections.append(_section("Recommended plan", "<p>No plan meets the SLO: nothing is recommended.</p>"))
    if recommended_run is not None:
        view = _view(recommended_run, "recommended plan")
        slo_for_run = parsed_slo or _summary_slo([view])
        sections.append(_cdf_section([view], ("ttft", "tpot", "e2e"), slo_for_run,
                                     "Recommended plan: latency distributions"))
        sections.append(_section("Recommended plan: over time", _figure(_timeline_figure([view]), "timeline"),
                                 note=_timeline_note([view])))
    page = _page(title, what, _badge(True), sections)
    return _write(out_path, page)


def _write(out_path: str | Path, page: str, inputs: Inputs = ()) -> Path:
    """Write the page atomically and return its path: a new file, or over an earlier report only."""
    path = claim_file(out_path, kind="HTML report", is_ours=_is_report, inputs=inputs)
    with write_errors(path):
        write_text_atomic(path, page)
    return path


def _is_report(path: Path) -> bool:
    """Whether `path` is a page written by paretoserve (its head carries `REPORT_MARKER`)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return REPORT_MARKER in handle.read(4096)
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------
# Runs: data
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _RunView:
    """A run prepared for the page.

    Attributes:
        name: its label on the page.
        run: the run as read.
        summary: summary.json, or the summary of its records when the folder has none.
        estimated: True for a simulated run.
        iterations: iterations.csv columns (`_ITERATION_COLUMNS` that it has), None without the file.
    """

    name: str
    run: Run
    summary: Summary
    estimated: bool
    iterations: dict[str, np.ndarray] | None


def _view(run: Run, name: str) -> _RunView:
    """Prepare `run` for the page (a malformed summary.json or iterations.csv is a UserError)."""
    if run.summary is None:
        summary = summarize(run.records, estimated=run.config.get("command") == "simulate")
    else:
        try:
            summary = Summary.model_validate(run.summary)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise UserError(f"not a run summary ({where}: {first['msg']})",
                            file=str(run.path / SUMMARY_FILE)) from None
    return _RunView(name, run, summary, summary.estimated, _read_iterations(run.path / ITERATIONS_FILE))


def _read_iterations(path: Path) -> dict[str, np.ndarray] | None:
    """The per-step columns of iterations.csv that the page uses, None when there is no such file."""
    if not path.is_file():
        return None
    try:
        table = pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"not a readable CSV ({str(exc).splitlines()[0]})", file=str(path)) from None
    missing = [c for c in ("replica", "start_s", "duration_s") if c not in table.column_names]
    if missing:
        raise UserError(f"missing columns: {', '.join(missing)}", file=str(path))
    try:
        return {c: table.column(c).to_numpy().astype(float)
                for c in _ITERATION_COLUMNS if c in table.column_names}
    except (pa.ArrowInvalid, ValueError, TypeError) as exc:
        raise UserError(f"non-numeric values ({exc})", file=str(path)) from None


def _names(runs: Sequence[Run]) -> list[str]:
    """A distinct label per run: the folder name, or more of its path when names clash."""
    names = [run.path.name or str(run.path) for run in runs]
    if len(set(names)) == len(names):
        return names
    return [str(run.path) if names.count(name) > 1 else name for run, name in zip(runs, names, strict=True)]


def _summary_slo(views: Sequence[_RunView]) -> Slo | None:
    """The SLO recorded in the first run summary that has one."""
    return next((parse_slo(v.summary.slo) for v in views if v.summary.slo), None)


def _samples(records: Sequence[RequestRecord], metric: str) -> np.ndarray:
    """Per-request `metric` ("ttft", "tpot", "e2e") of completed requests, or every gap for "itl"."""
    ok = [r for r in records if r.ok]
    if metric == "itl":
        return np.fromiter((gap for r in ok for gap in (r.itl_s or ())), dtype=float)
    values = (getattr(r, f"{metric}_s") for r in ok)
    return np.fromiter((v for v in values if v is not None), dtype=float)


# ------------------------------------------------------------------------------------------------
# Runs: figures
# ------------------------------------------------------------------------------------------------

def _colour(index: int) -> str:
    """Colour of the index-th run."""
    return _PALETTE[index % len(_PALETTE)]


def _line(view: _RunView, views: Sequence[_RunView]) -> dict[str, str]:
    """Estimated runs are drawn dashed when the page also has measured runs; otherwise all solid."""
    mixed = len({v.estimated for v in views}) > 1
    return {"dash": "dash" if mixed and view.estimated else "solid"}


def _cdf_points(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values, cumulative fraction), at most `_CDF_POINTS` ranks of them."""
    ordered = np.sort(values)
    fraction = np.arange(1, ordered.size + 1) / ordered.size
    if ordered.size > _CDF_POINTS:
        keep = np.unique(np.linspace(0, ordered.size - 1, _CDF_POINTS).round().astype(int))
        ordered, fraction = ordered[keep], fraction[keep]
    return ordered, fraction


_METRIC_TITLES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2e": "E2E"}


def _cdf_section(views: Sequence[_RunView], metrics: Sequence[str], slo: Slo | None, heading: str) -> str:
    """Section with overlaid CDFs of `metrics` (one panel per metric that has samples), or a note."""
    samples = {m: [(i, v, _samples(v.run.records, m)) for i, v in enumerate(views)] for m in metrics}
    shown = [m for m in metrics if any(values.size for _, _, values in samples[m])]
    notes = [_run_note(views)]
    for metric in metrics:
        missing = [view.name for _, view, values in samples[metric] if values.size == 0]
        if missing:
            notes.append(f"No {_METRIC_TITLES[metric]} samples in {_esc(', '.join(missing))}"
                         + (" (per-token gaps are recorded by bench runs; a simulated run keeps ITL only in "
                            "its summary)." if metric == "itl" else "."))
    if not shown:
        return _section(heading, "<p>No completed request: no latency distribution.</p>",
                        note=" ".join(notes))
    fig = _cdf_figure({m: samples[m] for m in shown}, slo)
    return _section(heading, _figure(fig, "cdf"), note=" ".join(notes))


def _cdf_figure(samples: dict[str, list[tuple[int, _RunView, np.ndarray]]], slo: Slo | None) -> go.Figure:
    """One CDF panel per metric (milliseconds), one colour per run (index, view, samples); SLO lines."""
    columns = len(samples) if len(samples) <= 3 else 2
    rows = math.ceil(len(samples) / columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=[f"{_METRIC_TITLES[m]} CDF" for m in samples],
                        horizontal_spacing=0.08, vertical_spacing=0.16)
    in_legend: set[str] = set()
    for panel, (metric, runs) in enumerate(samples.items()):
        row, col = panel // columns + 1, panel % columns + 1
        for index, view, values in runs:
            if values.size == 0:
                continue
            x, y = _cdf_points(values * 1e3)
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines", name=view.name, legendgroup=view.name,
                showlegend=view.name not in in_legend,
                line={"color": _colour(index), "shape": "hv", **_line(view, [v for _, v, _ in runs])},
                hovertemplate=f"{view.name}<br>%{{x:,.1f}} ms<br>%{{y:.1%}} of requests<extra></extra>"),
                row=row, col=col)
            in_legend.add(view.name)
        threshold = slo.threshold_s(metric) if slo else None
        if threshold is not None:
            fig.add_vline(x=threshold * 1e3, line={"color": "#d62728", "dash": "dot", "width": 1},
                          annotation_text="SLO", row=row, col=col)
        fig.update_xaxes(title_text="ms", row=row, col=col)
        fig.update_yaxes(title_text="fraction", range=[0, 1.02], tickformat=".0%", row=row, col=col)
    return _layout(fig, height=340 * rows + 60)


@dataclass(frozen=True)
class _Grid:
    """Time bins shared by every run of a page: edges and centres in seconds."""

    edges: np.ndarray

    @property
    def centres(self) -> np.ndarray:
        """Bin midpoints."""
        return (self.edges[:-1] + self.edges[1:]) / 2

    @property
    def width(self) -> float:
        """Bin width in seconds."""
        return float(self.edges[1] - self.edges[0])


def _grid(views: Sequence[_RunView]) -> _Grid:
    """`_TIMELINE_BINS` bins from 0 to the last token (or arrival) of any run."""
    end = max((r.last_token_s if r.last_token_s is not None else r.arrival_s
               for v in views for r in v.run.records), default=0.0)
    return _Grid(np.linspace(0.0, max(end, 1e-3), _TIMELINE_BINS + 1))


def _ramp_sum(points: np.ndarray, rates: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Σ rates_i · max(0, t − points_i) at each t, in O((n + len(t)) log n)."""
    order = np.argsort(points)
    p, r = points[order], rates[order]
    slope = np.concatenate(([0.0], np.cumsum(r)))
    offset = np.concatenate(([0.0], np.cumsum(r * p)))
    k = np.searchsorted(p, t, side="right")
    return t * slope[k] - offset[k]


def _step_sum(points: np.ndarray, amounts: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Σ amounts_i · [points_i ≤ t] at each t."""
    order = np.argsort(points)
    cumulative = np.concatenate(([0.0], np.cumsum(amounts[order])))
    return cumulative[np.searchsorted(points[order], t, side="right")]


def _tokens_by(records: Sequence[RequestRecord], t: np.ndarray) -> np.ndarray:
    """Output tokens produced by each time in `t`: each request's first token at its first-token time,
    the others spread evenly up to its last token."""
    ok = [r for r in records if r.ok]
    first = np.array([r.first_token_s for r in ok], dtype=float)
    last = np.array([r.last_token_s for r in ok], dtype=float)
    rest = np.array([max(r.output_tokens - 1, 0) for r in ok], dtype=float)
    instant = last <= first
    spread = ~instant
    rates = rest[spread] / (last[spread] - first[spread])
    return (_step_sum(first, np.ones_like(first), t) + _step_sum(last[instant], rest[instant], t)
            + _ramp_sum(first[spread], rates, t) - _ramp_sum(last[spread], rates, t))


def _record_series(view: _RunView, grid: _Grid) -> dict[str, np.ndarray]:
    """Timelines from the records: output tokens/s, completions/s, requests in flight."""
    records = view.run.records
    ok = [r for r in records if r.ok]
    done = np.sort([r.last_token_s for r in ok])
    arrived = np.sort([r.arrival_s for r in ok])
    completions, _ = np.histogram(done, bins=grid.edges)
    tokens = np.diff(_tokens_by(records, grid.edges))
    in_flight = (np.searchsorted(arrived, grid.centres, side="right")
                 - np.searchsorted(done, grid.centres, side="right"))
    return {"output tokens/s": tokens / grid.width, "completions/s": completions / grid.width,
            "requests in flight": in_flight.astype(float)}


def _state_at(ends: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The value of the last step ending at or before each t (0 before the first)."""
    index = np.searchsorted(ends, t, side="right") - 1
    return np.where(index >= 0, values[np.clip(index, 0, None)], 0.0)


def _iteration_series(columns: dict[str, np.ndarray], grid: _Grid) -> dict[str, np.ndarray]:
    """Timelines from iterations.csv: queue length and running requests summed over replicas, and KV
    cache use averaged over replicas, each replica holding the state at the end of its last step."""
    ends = columns["start_s"] + columns["duration_s"]
    replicas = np.unique(columns["replica"])
    wanted = {"waiting": "queue length (waiting)", "running": "running requests", "kv_used": "KV cache used"}
    series: dict[str, np.ndarray] = {}
    for column, label in wanted.items():
        if column not in columns:
            continue
        total = np.zeros_like(grid.centres)
        for replica in replicas:
            mine = columns["replica"] == replica
            order = np.argsort(ends[mine], kind="stable")
            total += _state_at(ends[mine][order], columns[column][mine][order], grid.centres)
        series[label] = total / len(replicas) if column == "kv_used" else total
    return series


_FRACTION_SERIES = {"KV cache used"}


def _timeline_figure(views: Sequence[_RunView]) -> go.Figure:
    """Stacked timelines (shared time axis), one colour per run."""
    grid = _grid(views)
    per_run = []
    for view in views:
        series = _record_series(view, grid)
        if view.iterations is not None:
            series.update(_iteration_series(view.iterations, grid))
        per_run.append(series)
    panels = list(dict.fromkeys(name for series in per_run for name in series))
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, subplot_titles=panels,
                        vertical_spacing=0.05)
    for index, (view, series) in enumerate(zip(views, per_run, strict=True)):
        for row, panel in enumerate(panels, start=1):
            if panel not in series:
                continue
            fig.add_trace(go.Scatter(
                x=grid.centres, y=series[panel], mode="lines", name=view.name, legendgroup=view.name,
                showlegend=row == 1, line={"color": _colour(index), "width": 1.5, **_line(view, views)},
                hovertemplate=f"{view.name}<br>t=%{{x:.1f}} s<br>{panel}: %{{y:,.3g}}<extra></extra>"),
                row=row, col=1)
            if panel in _FRACTION_SERIES:
                fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=row, col=1)
    fig.update_xaxes(title_text="time since the first arrival (s)", row=len(panels), col=1)
    fig.update_yaxes(rangemode="tozero")
    return _layout(fig, height=190 * len(panels) + 90)


def _pair(views: Sequence[_RunView]) -> tuple[_RunView, _RunView] | None:
    """(reference, other) for the per-request comparison: the measured run is the reference when one
    of two runs is estimated and the other measured; otherwise the first run. None unless two runs."""
    if len(views) != 2:
        return None
    first, second = views
    if first.estimated and not second.estimated:
        return second, first
    return first, second


def _matched(reference: _RunView, other: _RunView, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-request `metric` of the requests completed in both runs, matched by request id."""
    theirs = {r.request_id: getattr(r, f"{metric}_s") for r in other.run.records if r.ok}
    pairs = [(getattr(r, f"{metric}_s"), theirs[r.request_id]) for r in reference.run.records
             if r.ok and r.request_id in theirs]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    array = np.array(pairs, dtype=float).reshape(-1, 2)
    return array[:, 0], array[:, 1]


def _error_text(reference: np.ndarray, other: np.ndarray) -> str:
    """Median and p90 of |other − reference| / reference, in percent."""
    positive = reference > 0
    errors = np.abs(other[positive] - reference[positive]) / reference[positive]
    if errors.size == 0:
        return "no positive reference values"
    return (f"n={reference.size:,}, median |error| {np.median(errors):.1%}, "
            f"p90 |error| {np.percentile(errors, 90):.1%}")


def _kind(view: _RunView) -> str:
    """ "estimated" or "measured"."""
    return "estimated" if view.estimated else "measured"


def _axis_label(view: _RunView) -> str:
    """A run's name and kind for an axis title."""
    return f"{view.name} ({_kind(view)})"


def _comparison_figure(reference: _RunView, other: _RunView) -> tuple[go.Figure, list[str]] | None:
    """Per-request E2E and TTFT of `other` against `reference` with the y = x line, and a line of error
    figures per metric; None when the two runs share no completed request id."""
    panels = [(m, *_matched(reference, other, m)) for m in ("e2e", "ttft")]
    panels = [(m, x, y) for m, x, y in panels if x.size]
    if not panels:
        return None
    fig = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.1,
                        subplot_titles=[f"{_METRIC_TITLES[m]} per request" for m, _, _ in panels])
    rng = np.random.default_rng(0)
    for col, (_, x, y) in enumerate(panels, start=1):
        if x.size > _SCATTER_POINTS:
            keep = np.sort(rng.choice(x.size, _SCATTER_POINTS, replace=False))
            x, y = x[keep], y[keep]
        top = float(max(x.max(), y.max())) * 1e3 * 1.05
        fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="y = x", showlegend=col == 1,
                                 hoverinfo="skip", line={"color": "#7b8794", "dash": "dash", "width": 1}),
                      row=1, col=col)
        fig.add_trace(go.Scatter(x=x * 1e3, y=y * 1e3, mode="markers", name="requests", showlegend=col == 1,
                                 marker={"size": 5, "opacity": 0.55, "color": _PALETTE[0]},
                                 hovertemplate="%{x:,.1f} ms vs %{y:,.1f} ms<extra></extra>"), row=1, col=col)
        fig.update_xaxes(title_text=f"{_axis_label(reference)}, ms", range=[0, top], row=1, col=col)
        fig.update_yaxes(title_text=f"{_axis_label(other)}, ms", range=[0, top], row=1, col=col)
    errors = [f"{_METRIC_TITLES[m]}: {_error_text(x, y)}" for m, x, y in panels]
    return _layout(fig, height=480), errors


# ------------------------------------------------------------------------------------------------
# Runs: table and page
# ------------------------------------------------------------------------------------------------

def _latency_getter(metric: str, stat: str) -> Callable[[Summary], float | None]:
    """Reads `stat` of latency `metric` from a summary."""
    return lambda s: getattr(getattr(s, metric), stat)


_SUMMARY_ROWS: tuple[tuple[str, Callable[[Summary], float | None], str, float], ...] = (
    ("requests", lambda s: s.requests, ",d", 1.0),
    ("completed", lambda s: s.completed, ",d", 1.0),
    ("failed", lambda s: s.failed, ",d", 1.0),
    ("duration (s)", lambda s: s.duration_s, ",.1f", 1.0),
    *((f"{_METRIC_TITLES[m]} {stat} (ms)", _latency_getter(m, stat), ",.1f", 1e3)
      for m in ("ttft", "tpot", "itl", "e2e") for stat in ("mean", "p50", "p90", "p99")),
    ("output tokens/s", lambda s: s.output_tokens_per_s, ",.1f", 1.0),
    ("requests/s", lambda s: s.requests_per_s, ",.3f", 1.0),
    ("goodput (req/s)", lambda s: s.goodput_rps, ",.3f", 1.0),
    ("SLO attainment", lambda s: s.slo_attainment, ".1%", 1.0),
    ("KV cache peak", lambda s: s.kv_peak_fraction, ".1%", 1.0),
    ("preemptions", lambda s: s.preemptions_total, ",d", 1.0),
    ("J per output token", lambda s: s.joules_per_output_token, ".3g", 1.0),
    ("$ per million output tokens", lambda s: s.usd_per_million_output_tokens, ",.3f", 1.0),
)


def _difference(reference: float | None, other: float | None) -> str:
    """(other − reference) / reference in percent, a dash when undefined."""
    if reference is None or other is None or reference == 0:
        return _DASH
    return f"{(other - reference) / reference:+.1%}"


def _summary_table(views: Sequence[_RunView], pair: tuple[_RunView, _RunView] | None) -> str:
    """Summaries side by side; with two runs, a column of the relative difference."""
    header = ["", *(f"{v.name}" for v in views)]
    if pair:
        header.append(f"{pair[1].name} vs {pair[0].name}")
    kinds = _row(["kind", *(_badge(v.estimated) for v in views), *([""] if pair else [])])
    slos = _row(["SLO", *(_esc(v.summary.slo or _DASH) for v in views), *([""] if pair else [])])
    rows = [kinds, slos]
    for label, getter, spec, scale in _SUMMARY_ROWS:
        values = [getter(v.summary) for v in views]
        if all(value is None for value in values):
            continue
        cells = [_esc(label), *(_fmt(value, spec, scale) for value in values)]
        if pair:
            cells.append(_difference(getter(pair[0].summary), getter(pair[1].summary)))
        rows.append(_row(cells))
    return _table(header, rows, css_class="compact")


def _config_details(views: Sequence[_RunView]) -> str:
    """Each run's folder and config.yaml, folded."""
    parts = []
    for view in views:
        config = yaml.safe_dump(view.run.config, sort_keys=False, allow_unicode=True) or "{}"
        parts.append(f"<details><summary>{_esc(view.name)}: <code>{_esc(view.run.path)}</code></summary>"
                     f"<pre>{_esc(config)}</pre></details>")
    return "".join(parts)


def _run_note(views: Sequence[_RunView]) -> str:
    """What the CDFs show, and the line styles when estimated and measured runs are mixed."""
    styles = ("Dashed lines: estimated by simulation; solid lines: measured. "
              if len({v.estimated for v in views}) > 1 else "")
    return styles + f"Completed requests only; each curve has at most {_CDF_POINTS} points."


def _timeline_note(views: Sequence[_RunView]) -> str:
    """Where the timeline figures come from."""
    note = (f"{_TIMELINE_BINS} time bins. Output tokens/s spreads each request's tokens evenly between its "
            "first and last token; requests in flight are those arrived and not finished.")
    if any(v.iterations is not None for v in views):
        note += (" Queue length, running requests and KV cache use come from the simulator's "
                 f"{ITERATIONS_FILE} (summed over replicas; KV use averaged).")
    return note


def _comparison_section(reference: _RunView, other: _RunView) -> str:
    """Per-request latency of `other` against `reference`, with error figures."""
    heading = f"Per request: {other.name} vs {reference.name}"
    comparison = _comparison_figure(reference, other)
    if comparison is None:
        return _section(heading, "<p>The two runs share no completed request id: no per-request "
                                 "comparison.</p>")
    fig, errors = comparison
    note = ("Requests matched by request id; the dashed line is y = x. |error| = |y − x| / x. "
            + "; ".join(_esc(e) for e in errors) + ".")
    return _section(heading, _figure(fig, "per-request"), note=note)


def runs_report(runs: list[Run], *, title: str, out_path: str | Path) -> Path:
    """Write one HTML page comparing `runs` (simulate, bench or validate folders) and return its path.

    The page has the summaries side by side, overlaid TTFT/TPOT/ITL/E2E CDFs, timelines and, for two
    runs sharing request ids, per-request latency of one against the other (measured on x when one
    run is estimated and the other measured).
    """
    if not runs:
        raise UserError("no run to report")
    views = [_view(run, name) for run, name in zip(runs, _names(runs), strict=True)]
    pair = _pair(views)
    kinds = {v.estimated for v in views}
    badges = "".join(_badge(kind) for kind in sorted(kinds, reverse=True))
    what = f"Comparison of {len(views)} run{'s' if len(views) > 1 else ''}: " + ", ".join(
        f"<b>{_esc(v.name)}</b> ({_kind(v)}, {len(v.run.records):,} requests)" for v in views)
    sections = [
        _section("Summary", _summary_table(views, pair) + _config_details(views),
                 note="Latencies in milliseconds." + (" Last column: relative difference." if pair else "")),
        _cdf_section(views, ("ttft", "tpot", "itl", "e2e"), _summary_slo(views), "Latency distributions"),
        _section("Over time", _figure(_timeline_figure(views), "timeline"), note=_timeline_note(views)),
    ]
    if pair:
        sections.append(_comparison_section(*pair))
    read = [run.path / name for run in runs
            for name in (CONFIG_FILE, REQUESTS_FILE, SUMMARY_FILE, ITERATIONS_FILE)]
    return _write(out_path, _page(title, what, badges, sections), inputs=read)
