"""Metrics: per-request records and their summaries, the same code for simulated and measured runs."""

from paretoserve.metrics.records import RequestRecord

__all__ = ["RequestRecord"]
