"""One self-contained HTML page for `partition`: every candidate's latency and throughput with the
front under each link scenario, the median front's splits, and the sensitivity of the choice."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from paretoserve.plan.partition import Partition
from paretoserve.plan.partition_run import PartitionResult
from paretoserve.report.html import figure_markup, render_page

_FRONT_HEADER = ("#", "devices @ first block of the next stage", "latency ms", "samples/s", "mJ/sample",
                 "speed-up vs sequential", "stage ms", "transfer ms", "")
_SENS_HEADER = ("link", "front size", "best-throughput split", "samples/s", "knee split", "knee latency ms")
_COLOURS = {"p10": "#c0392b", "p50": "#1f6fb2", "p90": "#27ae60"}


def _ms(values: tuple[float, ...]) -> str:
    return " · ".join(f"{v * 1e3:,.1f}" for v in values)


def _figure(result: PartitionResult) -> go.Figure:
    mode = result.request.mode
    fig = go.Figure()
    every = result.by_scenario["p50"]
    fig.add_trace(go.Scatter(x=[p.latency_s * 1e3 for p in every], y=[p.throughput(mode) for p in every],
                               mode="markers", name="all candidates (median link)", text=[p.label for p in every],
                               marker={"color": "#b0b8c0", "size": 5, "opacity": 0.5},
                               hovertemplate="%{text}<br>%{x:,.1f} ms · %{y:,.2f}/s<extra></extra>"))
    for scenario, points in result.fronts.items():
        fig.add_trace(go.Scatter(x=[p.latency_s * 1e3 for p in points], y=[p.throughput(mode) for p in points],
                                 mode="lines+markers", name=f"front, {scenario} link", text=[p.label for p in points],
                                 line={"color": _COLOURS[scenario], "shape": "hv"}, marker={"size": 8},
                                 hovertemplate="%{text}<br>%{x:,.1f} ms · %{y:,.2f}/s<extra></extra>"))
    fig.update_layout(template="plotly_white", height=560, xaxis_title="latency of one batch, ms",
                      yaxis_title=f"throughput, {result.model_info['sample']}s/s ({mode})",
                      margin={"l": 70, "r": 30, "t": 30, "b": 50},
                      legend={"orientation": "h", "y": -0.15})
    return fig


def _front_rows(result: PartitionResult) -> list[list[object]]:
    mode = result.request.mode
    knee, best = result.knee(), result.best()
    rows = []
    for i, p in enumerate(result.fronts["p50"], 1):
        marks = " ".join(m for m, on in (("best throughput", p is best), ("knee", p is knee)) if on)
        rows.append([i, p.label, f"{p.latency_s * 1e3:,.1f}", f"{p.throughput(mode):,.2f}",
                     f"{p.energy(mode) * 1e3:,.1f}", f"{p.throughput_pipelined / p.throughput_sequential:.2f}×",
                     _ms(p.stage_s), _ms(p.transfer_s), marks])
    return rows


def _sens_rows(result: PartitionResult) -> list[list[object]]:
    mode = result.request.mode
    rows = []
    for scenario in result.fronts:
        best: Partition | None = result.best(scenario)
        knee = result.knee(scenario)
        rows.append([scenario, len(result.fronts[scenario]), best.label if best else "–",
                     f"{best.throughput(mode):,.2f}" if best else "–", knee.label if knee else "–",
                     f"{knee.latency_s * 1e3:,.1f}" if knee else "–"])
    return rows


def partition_report(result: PartitionResult, out_path: str | Path) -> Path:
    """Write the page (plotly.js inline, so it opens offline) and return its path."""
    r = result.request
    links = ", ".join(f"{link.name} ({link.display_name})" for link in result.link_profiles) or "none"
    what = (f"Every contiguous split of {result.stage_chain.name} over {', '.join(r.devices)} "
            f"({'in the order given' if r.fixed_order else 'in every device order'}), batch {r.batch} "
            f"({result.model_info['sample']}s), "
            f"{r.mode}{f' with {r.in_flight} batches in flight' if r.mode == 'pipelined' else ''}; stage times "
            f"from the roofline at {r.efficiency:.0%} of peak FLOP/s, transfers over the links' p10 / p50 / p90.")
    inputs = [("model", result.model_info["source"]), ("units (nodes or layers)", result.model_info["units"]),
              ("devices", ", ".join(d.display_name for d in result.chain)), ("links", links),
              ("candidates", len(result.by_scenario["p50"]))]
    return render_page("partition.html.j2", out_path, title=f"Where to split {result.stage_chain.name}", badges=[True],
                       what=what, figure=figure_markup(_figure(result), "partition"),
                       front_note="Non-dominated on latency, throughput and energy per sample; stage and transfer "
                                  "times are per batch.", front_header=_FRONT_HEADER, front_rows=_front_rows(result),
                       sens_header=_SENS_HEADER, sens_rows=_sens_rows(result), inputs_rows=inputs)
