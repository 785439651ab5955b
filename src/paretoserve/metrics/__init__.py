"""Metrics: per-request records and their summaries, the same code for simulated and measured runs."""

from paretoserve.metrics.records import RequestRecord
from paretoserve.metrics.slo import Slo, SloTarget, parse_slo
from paretoserve.metrics.summary import LatencyStats, Summary, SummaryBuilder, summarize

__all__ = ["LatencyStats", "RequestRecord", "Slo", "SloTarget", "Summary", "SummaryBuilder", "parse_slo",
           "summarize"]
