"""Terminal tables (Rich). Values are SI in the data; milliseconds only here, when printing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # the CLI imports this module at start-up: keep it light
    from paretoserve.metrics.summary import LatencyStats, Summary

_DASH = "–"
_LATENCY_COLUMNS = ("mean", "p50", "p90", "p95", "p99")


def compact_table(title: str) -> Table:
    """A borderless table (a rule under the header, one space between columns) for lists that
    must fit an 80-column terminal; give identifier and number columns `no_wrap=True`."""
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                 collapse_padding=True)


def _ms(value_s: float | None) -> str:
    """Seconds as milliseconds text, a dash for no value."""
    return _DASH if value_s is None else f"{value_s * 1e3:,.1f}"


def _latency_row(name: str, stats: LatencyStats) -> list[str]:
    """One latency row: the metric name and its mean and percentiles in ms."""
    return [name, *(_ms(getattr(stats, column)) for column in _LATENCY_COLUMNS)]


def _extra_rows(summary: Summary) -> list[tuple[str, str]]:
    """(label with unit, value) rows below the latency rows, for the figures the summary has."""
    rows = [
        ("output tok/s", f"{summary.output_tokens_per_s:,.1f}"),
        ("requests/s", f"{summary.requests_per_s:,.3f}"),
    ]
    if summary.goodput_rps is not None and summary.slo_attainment is not None:
        rows.append(("goodput req/s", f"{summary.goodput_rps:,.3f}"))
        rows.append(("SLO attainment", f"{summary.slo_attainment:.1%}"))
    if summary.kv_peak_fraction is not None:
        rows.append(("KV cache peak", f"{summary.kv_peak_fraction:.1%}"))
    rows.append(("preemptions", f"{summary.preemptions_total:,}"))
    if summary.joules_per_output_token is not None:
        rows.append(("J / output tok", f"{summary.joules_per_output_token:.3g}"))
    if summary.usd_per_million_output_tokens is not None:
        rows.append(("$ / M output tok", f"{summary.usd_per_million_output_tokens:,.2f}"))
    if summary.usd_per_million_total_tokens is not None:
        rows.append(("$ / M total tok", f"{summary.usd_per_million_total_tokens:,.2f}"))
    if summary.send_lag is not None and summary.send_lag.p99 is not None:
        rows.append(("client send lag p99", f"{summary.send_lag.p99 * 1e3:,.2f} ms"))
    rows.append(("failed", f"{summary.failed:,} / {summary.requests:,}"))
    return rows


def _caption(summary: Summary) -> str | None:
    """Notes under the table: the SLO, and whether the numbers are estimates or partial."""
    from paretoserve.metrics.slo import parse_slo
    from paretoserve.metrics.summary import CLIENT_LAG_BOUND_S

    notes = []
    if summary.slo is not None:
        target = parse_slo(summary.slo).attainment_target
        notes.append(f"SLO {summary.slo} (target: {target:.0%} of requests)")
    if summary.estimated:
        notes.append("estimated by simulation")
    if summary.partial:
        notes.append("partial run: interrupted, only the requests finished so far")
    if summary.client_kept_up is False and summary.send_lag is not None and summary.send_lag.p99 is not None:
        notes.append(f"the load generator did not keep up: its send lag p99 {summary.send_lag.p99 * 1e3:,.1f} ms "
                     f"> {CLIENT_LAG_BOUND_S * 1e3:g} ms, so less load was offered than asked and the latencies "
                     "include the client's own delay (try --workers)")
    return "; ".join(notes) or None


def summary_table(summary: Summary, *, title: str) -> Table:
    """The summary as one Rich table: latencies in ms, then throughput, SLO, KV, energy and cost."""
    table = Table(title=title, caption=_caption(summary))
    table.add_column("latency in ms", no_wrap=True)
    for column in _LATENCY_COLUMNS:
        table.add_column(column, justify="right", no_wrap=True)
    for name in ("ttft", "tpot", "itl", "e2e"):
        table.add_row(*_latency_row(name.upper(), getattr(summary, name)))
    table.add_section()
    for label, value in _extra_rows(summary):
        table.add_row(label, value)
    return table


def print_summary(summary: Summary, *, title: str, console: Console | None = None) -> None:
    """Print `summary_table(summary)` to `console` (a new stdout console when None)."""
    (console or Console(emoji=False)).print(summary_table(summary, title=title))
