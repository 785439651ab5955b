"""Time series and distributions of a run: latency samples and CDF points, throughput and queue
timelines over time bins, per-request latencies matched between two runs.

The same code serves simulated and measured runs. Times are seconds from the start of the run;
rates are per second. The HTML report (`paretoserve.report.html`) draws these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from paretoserve.metrics.records import RequestRecord


def latency_samples(records: Iterable[RequestRecord], metric: str) -> np.ndarray:
    """Seconds of `metric` ("ttft", "tpot", "e2e") per completed request, or every gap for "itl"."""
    ok = [r for r in records if r.ok]
    if metric == "itl":
        return np.fromiter((gap for r in ok for gap in (r.itl_s or ())), dtype=float)
    values = (getattr(r, f"{metric}_s") for r in ok)
    return np.fromiter((v for v in values if v is not None), dtype=float)


def cdf_points(values: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values, cumulative fraction of samples ≤ each), at most `max_points` evenly spaced
    ranks of them (the first and last rank always kept)."""
    ordered = np.sort(values)
    fraction = np.arange(1, ordered.size + 1) / ordered.size
    if ordered.size > max_points:
        keep = np.unique(np.linspace(0, ordered.size - 1, max_points).round().astype(int))
        ordered, fraction = ordered[keep], fraction[keep]
    return ordered, fraction


@dataclass(frozen=True)
class TimeBins:
    """Equal time bins: `edges` in seconds (one more than the bins)."""

    edges: np.ndarray

    @property
    def centres(self) -> np.ndarray:
        """Bin midpoints (seconds)."""
        return (self.edges[:-1] + self.edges[1:]) / 2

    @property
    def width(self) -> float:
        """Bin width in seconds."""
        return float(self.edges[1] - self.edges[0])


def time_bins(records: Iterable[RequestRecord], count: int) -> TimeBins:
    """`count` bins from 0 to the last token (or, for a request without one, arrival) of any record."""
    end = max((r.last_token_s if r.last_token_s is not None else r.arrival_s for r in records), default=0.0)
    return TimeBins(np.linspace(0.0, max(end, 1e-3), count + 1))


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


def tokens_by(records: Sequence[RequestRecord], t: np.ndarray) -> np.ndarray:
    """Output tokens produced by each time in `t` (seconds): each completed request's first token at
    its first-token time, the others spread evenly up to its last token."""
    ok = [r for r in records if r.ok]
    first = np.array([r.first_token_s for r in ok], dtype=float)
    last = np.array([r.last_token_s for r in ok], dtype=float)
    rest = np.array([max(r.output_tokens - 1, 0) for r in ok], dtype=float)
    instant = last <= first
    spread = ~instant
    rates = rest[spread] / (last[spread] - first[spread])
    return (_step_sum(first, np.ones_like(first), t) + _step_sum(last[instant], rest[instant], t)
            + _ramp_sum(first[spread], rates, t) - _ramp_sum(last[spread], rates, t))


def request_timelines(records: Sequence[RequestRecord], bins: TimeBins) -> dict[str, np.ndarray]:
    """Per bin, from the completed requests: "output_tokens_per_s" (`tokens_by`), "completions_per_s"
    and "in_flight" (requests arrived and not finished, at the bin centre)."""
    ok = [r for r in records if r.ok]
    done = np.sort([r.last_token_s for r in ok])
    arrived = np.sort([r.arrival_s for r in ok])
    completions, _ = np.histogram(done, bins=bins.edges)
    tokens = np.diff(tokens_by(records, bins.edges))
    in_flight = (np.searchsorted(arrived, bins.centres, side="right")
                 - np.searchsorted(done, bins.centres, side="right"))
    return {"output_tokens_per_s": tokens / bins.width, "completions_per_s": completions / bins.width,
            "in_flight": in_flight.astype(float)}


def _state_at(ends: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The value of the last step ending at or before each t (0 before the first)."""
    index = np.searchsorted(ends, t, side="right") - 1
    return np.where(index >= 0, values[np.clip(index, 0, None)], 0.0)


def iteration_timelines(columns: Mapping[str, np.ndarray], bins: TimeBins) -> dict[str, np.ndarray]:
    """Per bin centre, from a simulator's iterations.csv columns (replica, start_s, duration_s and any
    of waiting, running, kv_used): "waiting" and "running" summed over replicas, "kv_used" (fraction)
    averaged over them; each replica holds the state at the end of its last step."""
    ends = columns["start_s"] + columns["duration_s"]
    replicas = np.unique(columns["replica"])
    series: dict[str, np.ndarray] = {}
    for column in ("waiting", "running", "kv_used"):
        if column not in columns:
            continue
        total = np.zeros_like(bins.centres)
        for replica in replicas:
            mine = columns["replica"] == replica
            order = np.argsort(ends[mine], kind="stable")
            total += _state_at(ends[mine][order], columns[column][mine][order], bins.centres)
        series[column] = total / len(replicas) if column == "kv_used" else total
    return series


def matched_latencies(reference: Iterable[RequestRecord], other: Iterable[RequestRecord],
                      metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of `metric` of the requests completed in both runs, matched by request id, in the
    order of `reference`: (reference values, other values)."""
    theirs = {r.request_id: getattr(r, f"{metric}_s") for r in other if r.ok}
    pairs = [(getattr(r, f"{metric}_s"), theirs[r.request_id]) for r in reference
             if r.ok and r.request_id in theirs]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    array = np.array(pairs, dtype=float).reshape(-1, 2)
    return array[:, 0], array[:, 1]


def relative_errors(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """|other − reference| / reference where reference > 0 (fractions)."""
    positive = reference > 0
    return np.abs(other[positive] - reference[positive]) / reference[positive]
