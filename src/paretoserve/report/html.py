"""Self-contained HTML pages (plotly): the plan-search report and the comparison of run folders.

Each page is one file that works offline: plotly.js is embedded once, inline, in the page head, and
every figure after it is a ``<div>`` plus a small script that draws into it (no CDN, no network).
The markup is in Jinja2 templates (`templates/`, autoescaped); this module builds the figures and
the values the templates lay out; the series it draws come from `paretoserve.metrics.timeseries`.
Values are SI in the data; milliseconds only on the page. Numbers from the simulator are labelled
"estimated by simulation", numbers from a real server "measured".

- `plan_report`: the Pareto front of a plan search (cost vs TTFT and cost vs energy), the ranked front
  with the command that reproduces each plan's simulation, the recommended plan and its reasons, and
  that plan's simulated latency CDFs and timelines.
- `runs_report`: any number of run folders side by side: summary table, overlaid latency CDFs,
  timelines, and per-request predicted vs measured latency when two runs share request ids.
"""

from __future__ import annotations

import functools
import html
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import plotly.graph_objects as go
import plotly.offline
import pyarrow as pa
import pyarrow.csv as pacsv
import yaml
from markupsafe import Markup
from plotly.subplots import make_subplots
from pydantic import ValidationError

from paretoserve.atomic import write_text_atomic
from paretoserve.errors import UserError
from paretoserve.metrics.slo import Slo, parse_slo
from paretoserve.metrics.summary import Summary, summarize
from paretoserve.metrics.timeseries import (
    cdf_points,
    iteration_timelines,
    latency_samples,
    matched_latencies,
    relative_errors,
    request_timelines,
    time_bins,
)
from paretoserve.outputs import Inputs, claim_file, write_errors
from paretoserve.plan.api import verification_sentence
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


# ------------------------------------------------------------------------------------------------
# Page building blocks
# ------------------------------------------------------------------------------------------------

@functools.cache
def _templates() -> jinja2.Environment:
    """The page templates (package data), every value escaped unless it is `Markup`."""
    return jinja2.Environment(loader=jinja2.PackageLoader("paretoserve.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def _version() -> str:
    """The installed paretoserve version, or "dev" when not installed."""
    try:
        return metadata.version("paretoserve")
    except metadata.PackageNotFoundError:
        return "dev"


def render_page(template: str, out_path: str | Path, *, title: str, badges: Sequence[bool], inputs: Inputs = (),
            **context: Any) -> Path:
    """Render `template` with the page head's values (plotly.js inline) and write it atomically: a new
    file, or over an earlier report only (never over one of `inputs`)."""
    path = claim_file(out_path, kind="HTML report", is_ours=_is_report, inputs=inputs)
    page = _templates().get_template(template).render(
        title=title, badges=badges, made=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), version=_version(),
        plotly_js=Markup(plotly.offline.get_plotlyjs()), dash=_DASH, report_marker=Markup(REPORT_MARKER),
        **context)
    with write_errors(path):
        write_text_atomic(path, page)
    return path


def figure_markup(fig: go.Figure, div_id: str) -> Markup:
    """The figure as a div drawn by an inline script (plotly.js is already in the page head)."""
    return Markup(fig.to_html(include_plotlyjs=False, full_html=False, div_id=div_id, config=_PLOT_CONFIG))


@dataclass(frozen=True)
class _Panel:
    """A section holding one figure, or the message `empty` when there is nothing to draw."""

    heading: str
    note: str | None
    figure: Markup | None
    empty: str = ""


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
        moe = "".join(f" {name}{plan[key]}" for key, name in (("dp_attention", "dpa"), ("ep", "ep"))
                      if plan.get(key, 1) > 1)
        layout = f"tp{plan.get('tp', 1)}{moe} pp{plan.get('pp', 1)} dp{plan.get('dp', 1)}"
    return (f"{plan.get('device', '?')} {layout} · seqs {plan.get('max_num_seqs', _DASH)} · "
            f"batched tok {plan.get('max_num_batched_tokens', _DASH)} · W {plan.get('weight_dtype', _DASH)} "
            f"KV {plan.get('kv_dtype', _DASH)} · {plan.get('policy', _DASH)} · {plan.get('router', _DASH)}")


def _device_type(plan: dict[str, Any]) -> str:
    """The plan's device type name."""
    return str(plan["plan"].get("device", "?"))


#: How each figure of a plan is printed: format spec, or "ms" for seconds shown in milliseconds. In the
#: order of the ranked table's columns.
_PLAN_FIGURES = {"max_rate_rps": ",.2f", "goodput_rps": ",.2f", "usd_per_hour": ",.2f",
                 "usd_per_million_tokens": ",.3f", "usd_per_million_total_tokens": ",.3f", "ttft_p90_s": "ms",
                 "tpot_p90_s": "ms", "e2e_p90_s": "ms",
                 "joules_per_token": ".3g", "goodput_per_device": ",.3f", "goodput_per_usd_hour": ",.3f",
                 "slo_attainment": ".1%"}


def _plan_text(plan: dict[str, Any], key: str) -> str:
    """One figure of a plan as printed on the page (a dash when it has none)."""
    spec = _PLAN_FIGURES[key]
    return _ms(plan.get(key)) if spec == "ms" else _fmt(plan.get(key), spec)


def _hover(plan: dict[str, Any]) -> list[Any]:
    """customdata for one plan's hover text (see `_HOVER`)."""
    return [plan["label"], plan["devices"],
            *(_plan_text(plan, key) for key in ("usd_per_million_tokens", "ttft_p90_s", "tpot_p90_s", "e2e_p90_s",
                                                "joules_per_token", "goodput_rps", "usd_per_hour", "slo_attainment"))]


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
                           text=f"recommended: {html.escape(plan['label'])}", showarrow=True, arrowhead=2,
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
    return ", ".join(marks)


_FRONT_HEADER = ("#", "plan", "devices", "max rate req/s", "goodput req/s", "$/h", "$/M out tok", "$/M all tok",
                 "TTFT p90 ms",
                 "TPOT p90 ms", "E2E p90 ms", "J/tok", "goodput/device", "goodput per $/h", "SLO att.")


def _front_row(plan: dict[str, Any]) -> dict[str, Any]:
    """What the ranked table shows of one front plan: its figures, configuration and reproduce command."""
    cells = [str(plan["devices"]), *(_plan_text(plan, key) for key in _PLAN_FIGURES)]
    return {"label": plan["label"], "marks": _marks(plan), "cells": cells, "recommended": plan.get("recommended"),
            "config": _plan_config(plan["plan"]), "command": plan["command"]}


def _recommended(plan: dict[str, Any]) -> dict[str, Any]:
    """The recommended plan's headline figures, reasons, configuration and reproduce command."""
    cards = [("devices", str(plan["devices"]))] + [(label, _plan_text(plan, key)) for label, key in (
        ("$ per million output tokens", "usd_per_million_tokens"),
        ("$ per million prompt + output tokens", "usd_per_million_total_tokens"), ("goodput (req/s)", "goodput_rps"),
        ("max rate (req/s)", "max_rate_rps"), ("TTFT p90 (ms)", "ttft_p90_s"), ("TPOT p90 (ms)", "tpot_p90_s"),
        ("J per output token", "joules_per_token"), ("$ per hour", "usd_per_hour"))]
    reasons = [line.strip(" -•") for line in str(plan.get("reason") or "").splitlines() if line.strip(" -•")]
    verified = plan.get("verified")
    verification = (verification_sentence({"label": plan["label"], **verified}) if verified
                    else "Not verified by a whole-plan simulation: the figures are the planner's estimates.")
    if verified and not verified["met"]:
        verification += " No plan was verified to meet the SLO: this recommendation is an estimate only."
    return {"label": plan["label"], "cards": cards, "reasons": reasons, "config": _plan_config(plan["plan"]),
            "command": plan["command"], "verification": verification, "met": bool(verified and verified["met"])}


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
    counts = {"plans": len(plans), "feasible": sum(1 for p in plans if p.get("feasible")),
              "front": sum(1 for p in plans if p.get("pareto"))}
    run_panels = []
    if recommended_run is not None:
        view = _view(recommended_run, "recommended plan")
        run_panels = [_cdf_panel([view], ("ttft", "tpot", "e2e"), parsed_slo or _summary_slo([view]),
                                 "Recommended plan: latency distributions"),
                      _timeline_panel([view], "Recommended plan: over time")]
    front = sorted((p for p in plans if p.get("pareto")), key=_rank_key)
    return render_page(
        "plan.html.j2", out_path, title=title, badges=[True], counts=counts, slo=slo,
        ttft_figure=figure_markup(_plan_figure(plans, _TTFT, slo_s=parsed_slo.ttft_s if parsed_slo else None),
                            "pareto-ttft"),
        energy_figure=figure_markup(_plan_figure(plans, _ENERGY, slo_s=None), "pareto-energy"),
        front_header=_FRONT_HEADER, front=[_front_row(p) for p in front],
        recommended=_recommended(recommended) if recommended is not None else None, run_panels=run_panels)


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


_METRIC_TITLES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2e": "E2E"}


def _cdf_panel(views: Sequence[_RunView], metrics: Sequence[str], slo: Slo | None, heading: str) -> _Panel:
    """Overlaid CDFs of `metrics` (one subplot per metric that has samples), or a message."""
    samples = {m: [(i, v, latency_samples(v.run.records, m)) for i, v in enumerate(views)] for m in metrics}
    shown = [m for m in metrics if any(values.size for _, _, values in samples[m])]
    notes = [_run_note(views)]
    for metric in metrics:
        missing = [view.name for _, view, values in samples[metric] if values.size == 0]
        if missing:
            notes.append(f"No {_METRIC_TITLES[metric]} samples in {', '.join(missing)}"
                         + (" (per-token gaps are recorded by bench runs; a simulated run keeps ITL only in "
                            "its summary)." if metric == "itl" else "."))
    figure = figure_markup(_cdf_figure({m: samples[m] for m in shown}, slo), "cdf") if shown else None
    return _Panel(heading, " ".join(notes), figure, "No completed request: no latency distribution.")


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
            x, y = cdf_points(values * 1e3, _CDF_POINTS)
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


#: Timeline panel titles of the series of `paretoserve.metrics.timeseries`.
_TIMELINE_TITLES = {"output_tokens_per_s": "output tokens/s", "completions_per_s": "completions/s",
                    "in_flight": "requests in flight", "waiting": "queue length (waiting)",
                    "running": "running requests", "kv_used": "KV cache used"}
_FRACTION_SERIES = {"kv_used"}


def _timeline_figure(views: Sequence[_RunView]) -> go.Figure:
    """Stacked timelines (shared time axis), one colour per run."""
    bins = time_bins(itertools.chain.from_iterable(v.run.records for v in views), _TIMELINE_BINS)
    per_run = []
    for view in views:
        series = request_timelines(view.run.records, bins)
        if view.iterations is not None:
            series.update(iteration_timelines(view.iterations, bins))
        per_run.append(series)
    panels = list(dict.fromkeys(name for series in per_run for name in series))
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True,
                        subplot_titles=[_TIMELINE_TITLES[p] for p in panels], vertical_spacing=0.05)
    for index, (view, series) in enumerate(zip(views, per_run, strict=True)):
        for row, panel in enumerate(panels, start=1):
            if panel not in series:
                continue
            fig.add_trace(go.Scatter(
                x=bins.centres, y=series[panel], mode="lines", name=view.name, legendgroup=view.name,
                showlegend=row == 1, line={"color": _colour(index), "width": 1.5, **_line(view, views)},
                hovertemplate=f"{view.name}<br>t=%{{x:.1f}} s<br>{_TIMELINE_TITLES[panel]}: %{{y:,.3g}}"
                              "<extra></extra>"),
                row=row, col=1)
            if panel in _FRACTION_SERIES:
                fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=row, col=1)
    fig.update_xaxes(title_text="time since the first arrival (s)", row=len(panels), col=1)
    fig.update_yaxes(rangemode="tozero")
    return _layout(fig, height=190 * len(panels) + 90)


def _timeline_panel(views: Sequence[_RunView], heading: str) -> _Panel:
    """The timelines' section."""
    return _Panel(heading, _timeline_note(views), figure_markup(_timeline_figure(views), "timeline"))


def _pair(views: Sequence[_RunView]) -> tuple[_RunView, _RunView] | None:
    """(reference, other) for the per-request comparison: the measured run is the reference when one
    of two runs is estimated and the other measured; otherwise the first run. None unless two runs."""
    if len(views) != 2:
        return None
    first, second = views
    if first.estimated and not second.estimated:
        return second, first
    return first, second


def _error_text(reference: np.ndarray, other: np.ndarray) -> str:
    """Median and p90 of |other − reference| / reference, in percent."""
    errors = relative_errors(reference, other)
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
    panels = [(m, *matched_latencies(reference.run.records, other.run.records, m)) for m in ("e2e", "ttft")]
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


def _summary(views: Sequence[_RunView], pair: tuple[_RunView, _RunView] | None) -> dict[str, Any]:
    """The summary table's header and rows (label, each run's value and, with two runs, the relative
    difference), skipping figures no run has."""
    header = ["", *(v.name for v in views)]
    if pair:
        header.append(f"{pair[1].name} vs {pair[0].name}")
    rows = []
    for label, getter, spec, scale in _SUMMARY_ROWS:
        values = [getter(v.summary) for v in views]
        if all(value is None for value in values):
            continue
        cells = [label, *(_fmt(value, spec, scale) for value in values)]
        if pair:
            cells.append(_difference(getter(pair[0].summary), getter(pair[1].summary)))
        rows.append(cells)
    return {"header": header, "rows": rows}


def _run_facts(view: _RunView) -> dict[str, Any]:
    """What the page says of one run: name, kind, request count, SLO, folder and config.yaml."""
    return {"name": view.name, "estimated": view.estimated, "kind": _kind(view), "requests": len(view.run.records),
            "slo": view.summary.slo or _DASH, "path": str(view.run.path),
            "config": yaml.safe_dump(view.run.config, sort_keys=False, allow_unicode=True) or "{}"}


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


def _comparison_panel(reference: _RunView, other: _RunView) -> _Panel:
    """Per-request latency of `other` against `reference`, with error figures."""
    heading = f"Per request: {other.name} vs {reference.name}"
    comparison = _comparison_figure(reference, other)
    if comparison is None:
        return _Panel(heading, None, None, "The two runs share no completed request id: no per-request comparison.")
    fig, errors = comparison
    note = ("Requests matched by request id; the dashed line is y = x. |error| = |y − x| / x. "
            + "; ".join(errors) + ".")
    return _Panel(heading, note, figure_markup(fig, "per-request"))


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
    panels = [_cdf_panel(views, ("ttft", "tpot", "itl", "e2e"), _summary_slo(views), "Latency distributions"),
              _timeline_panel(views, "Over time")]
    if pair:
        panels.append(_comparison_panel(*pair))
    read = [run.path / name for run in runs
            for name in (CONFIG_FILE, REQUESTS_FILE, SUMMARY_FILE, ITERATIONS_FILE)]
    return render_page("runs.html.j2", out_path, title=title, badges=sorted({v.estimated for v in views}, reverse=True),
                   inputs=read, runs=[_run_facts(v) for v in views], summary=_summary(views, pair),
                   difference_column=pair is not None, panels=panels)
