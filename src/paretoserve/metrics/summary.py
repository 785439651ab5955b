"""Run summaries: latency percentiles, throughput, goodput, energy and cost from per-request records.

Units are SI throughout: seconds, tokens per second, requests per second, joules, US dollars.

Percentiles use linear interpolation between the two nearest ranks, numpy's default
(``numpy.percentile(..., method="linear")``): for n sorted samples x[0..n-1], the q-th percentile is
x[h] interpolated at h = (n - 1) q / 100. Weighted samples (value v with integer count c, as the
simulator reports ITL: a decode step of duration d over n sequences is n samples of d) give exactly
the percentile of the list in which each value is repeated `count` times.

Definitions (DESIGN §3): duration is first arrival to last token; throughput counts the output
tokens of completed requests; goodput counts completed requests that meet the SLO per request
(`Slo.request_ok`), per second of duration; SLO attainment is that count over all requests.

Measured open-loop runs also carry the client's own send lag (how late the load generator sent
each request against its schedule, slot waits under a concurrency cap excluded). When its p99
exceeds `CLIENT_LAG_BOUND_S` the client did not keep up with the schedule: the run offered less
load than asked and its latencies include the client's own delay, and the summary says so
(`client_kept_up` False).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable

import numpy as np
from pydantic import BaseModel, ConfigDict

from paretoserve.metrics.records import RequestRecord
from paretoserve.metrics.slo import Slo
from paretoserve.workload.synthetic import delivered_rate

_QUANTILES = (50.0, 90.0, 95.0, 99.0)

#: p99 client send lag above which a measured run is flagged as limited by the client (s).
CLIENT_LAG_BOUND_S = 0.005


class LatencyStats(BaseModel):
    """Distribution of one latency metric in seconds; all None when there are no samples."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


class Summary(BaseModel):
    """What a run achieved: the contents of `summary.json`.

    Attributes:
        requests: records in the run; completed + failed.
        completed: requests that produced their tokens without error.
        failed: requests with an error (or no tokens).
        duration_s: first arrival to last token, seconds.
        ttft, tpot, itl, e2e: latency distributions, seconds.
        input_tokens, output_tokens: prompt and output tokens of completed requests.
        input_tokens_per_s, output_tokens_per_s, requests_per_s: over `duration_s`.
        delivered_rate_rps: the rate at which the requests arrived, (requests − 1) / (last arrival −
            first arrival) in requests/s (`workload.synthetic.delivered_rate`); None for fewer
            than two distinct arrival times.
        slo: the SLO string used, None when none was given.
        goodput_rps: completed requests per second meeting the SLO (None without an SLO).
        slo_attainment: fraction of all requests meeting the SLO (None without an SLO).
        preemptions_total: preemptions summed over requests.
        kv_peak_fraction: peak KV-cache use as a fraction of capacity (simulated runs).
        energy_j: energy used by the devices, joules.
        joules_per_output_token: energy_j / output_tokens.
        cost_usd: cost of the devices for the run, US dollars.
        usd_per_million_output_tokens: cost_usd per 1e6 output tokens.
        usd_per_million_total_tokens: cost_usd per 1e6 tokens processed, prompt plus output (a
            prompt-heavy workload looks expensive per output token alone).
        estimated: True for simulated runs (numbers are estimates, not measurements).
        partial: True when the run was interrupted and only the records written so far count.
        send_lag: the load generator's own lateness in sending, seconds (measured open-loop runs;
            None otherwise).
        client_kept_up: False when `send_lag.p99` exceeds `CLIENT_LAG_BOUND_S` (None without
            send lags).
    """

    model_config = ConfigDict(extra="forbid")

    requests: int
    completed: int
    failed: int
    duration_s: float
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2e: LatencyStats
    input_tokens: int
    output_tokens: int
    input_tokens_per_s: float
    output_tokens_per_s: float
    requests_per_s: float
    delivered_rate_rps: float | None = None
    slo: str | None = None
    goodput_rps: float | None = None
    slo_attainment: float | None = None
    preemptions_total: int = 0
    kv_peak_fraction: float | None = None
    energy_j: float | None = None
    joules_per_output_token: float | None = None
    cost_usd: float | None = None
    usd_per_million_output_tokens: float | None = None
    usd_per_million_total_tokens: float | None = None
    estimated: bool = False
    partial: bool = False
    send_lag: LatencyStats | None = None
    client_kept_up: bool | None = None


def _lerp(low: float, high: float, fraction: float) -> float:
    """numpy's interpolation formula (exact at both ends)."""
    diff = high - low
    return high - diff * (1.0 - fraction) if fraction >= 0.5 else low + diff * fraction


def weighted_percentiles(values: np.ndarray, counts: np.ndarray, quantiles: Iterable[float]) -> list[float]:
    """Percentiles (linear interpolation, as numpy) of `values` each repeated `counts` times.

    Args:
        values: sample values.
        counts: non-negative integer multiplicity of each value, at least one positive.
        quantiles: percentiles to compute, in [0, 100].
    """
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    cumulative = np.cumsum(counts[order])
    total = int(cumulative[-1])
    result = []
    for quantile in quantiles:
        fraction = quantile / 100.0
        position = (total - 1) * fraction  # q / 100 first, rounded as numpy does
        below = math.floor(position)
        above = min(below + 1, total - 1)
        low, high = np.searchsorted(cumulative, [below, above], side="right")
        result.append(_lerp(float(sorted_values[low]), float(sorted_values[high]), position - below))
    return result


def latency_stats(values: np.ndarray, counts: np.ndarray | None = None) -> LatencyStats:
    """`LatencyStats` of samples in seconds, optionally weighted by integer `counts`."""
    if counts is None:
        if values.size == 0:
            return LatencyStats()
        p50, p90, p95, p99 = np.percentile(values, _QUANTILES).tolist()
        return LatencyStats(count=int(values.size), mean=float(values.mean()), p50=p50, p90=p90, p95=p95,
                            p99=p99, max=float(values.max()))
    total = int(counts.sum())
    if total == 0:
        return LatencyStats()
    p50, p90, p95, p99 = weighted_percentiles(values, counts, _QUANTILES)
    return LatencyStats(count=total, mean=float(np.dot(values, counts) / total), p50=p50, p90=p90, p95=p95,
                        p99=p99, max=float(values[counts > 0].max()))


class SummaryBuilder:
    """Accumulates records one at a time and produces the `Summary`.

    Memory: three floats per completed request plus the ITL samples (one value and count per
    `add_itl` call or per recorded gap); no per-token lists are kept.
    """

    def __init__(self, slo: Slo | None = None) -> None:
        self.slo = slo
        self._ttft = array("d")
        self._tpot = array("d")
        self._e2e = array("d")
        self._itl = array("d")
        self._itl_counts = array("q")
        self._send_lag = array("d")
        self._requests = 0
        self._completed = 0
        self._good = 0
        self._input_tokens = 0
        self._output_tokens = 0
        self._preemptions = 0
        self._start_s = math.inf
        self._last_arrival_s = -math.inf
        self._end_s = -math.inf

    def add(self, record: RequestRecord) -> None:
        """Count one request (its `itl_s` gaps, when present, become ITL samples)."""
        self._requests += 1
        self._preemptions += record.preemptions
        self._start_s = min(self._start_s, record.arrival_s)
        self._last_arrival_s = max(self._last_arrival_s, record.arrival_s)
        end = record.last_token_s if record.last_token_s is not None else record.arrival_s
        self._end_s = max(self._end_s, end)
        if record.extra and "lag_s" in record.extra:
            lag = record.extra["lag_s"]
            wait = record.extra.get("slot_wait_s") or 0.0
            if isinstance(lag, int | float) and isinstance(wait, int | float):
                self._send_lag.append(max(0.0, lag - wait))
        if not record.ok:
            return
        self._completed += 1
        self._input_tokens += record.prompt_tokens
        self._output_tokens += record.output_tokens
        self._ttft.append(record.ttft_s)  # type: ignore[arg-type]
        self._e2e.append(record.e2e_s)  # type: ignore[arg-type]
        tpot = record.tpot_s
        if tpot is not None:
            self._tpot.append(tpot)
        if record.itl_s:
            self._itl.extend(record.itl_s)
            self._itl_counts.extend([1] * len(record.itl_s))
        if self.slo is not None and self.slo.request_ok(record):
            self._good += 1

    def add_itl(self, value_s: float, count: int = 1) -> None:
        """Add `count` ITL samples of `value_s` seconds (e.g. one decode step over `count` sequences)."""
        if count < 0:
            raise ValueError(f"ITL sample count must be >= 0, got {count}")
        self._itl.append(value_s)
        self._itl_counts.append(count)

    def finish(self, **extras: object) -> Summary:
        """The summary so far; `extras` set optional fields (energy_j, cost_usd, kv_peak_fraction,
        estimated, partial, ...). joules_per_output_token and the costs per million output and
        total tokens are derived from energy_j and cost_usd unless given."""
        duration = max(0.0, self._end_s - self._start_s) if self._requests else 0.0

        def per_second(amount: float) -> float:
            return amount / duration if duration > 0 else 0.0

        fields: dict[str, object] = {
            "requests": self._requests, "completed": self._completed,
            "failed": self._requests - self._completed, "duration_s": duration,
            "ttft": latency_stats(_floats(self._ttft)), "tpot": latency_stats(_floats(self._tpot)),
            "itl": latency_stats(_floats(self._itl), np.frombuffer(self._itl_counts, dtype=np.int64)),
            "e2e": latency_stats(_floats(self._e2e)),
            "input_tokens": self._input_tokens, "output_tokens": self._output_tokens,
            "input_tokens_per_s": per_second(self._input_tokens),
            "output_tokens_per_s": per_second(self._output_tokens),
            "requests_per_s": per_second(self._completed),
            "delivered_rate_rps": delivered_rate(self._requests, self._start_s, self._last_arrival_s),
            "preemptions_total": self._preemptions,
        }
        if self.slo is not None:
            fields["slo"] = str(self.slo)
            fields["goodput_rps"] = per_second(self._good)
            fields["slo_attainment"] = self._good / self._requests if self._requests else 0.0
        if self._send_lag:
            lag = latency_stats(_floats(self._send_lag))
            fields["send_lag"] = lag
            fields["client_kept_up"] = bool(lag.p99 is not None and lag.p99 <= CLIENT_LAG_BOUND_S)
        fields.update(_per_token(extras, self._input_tokens, self._output_tokens))
        fields.update(extras)
        return Summary.model_validate(fields)


def _floats(samples: array) -> np.ndarray:
    """A float64 view of an `array('d')` (no copy)."""
    return np.frombuffer(samples, dtype=np.float64) if len(samples) else np.empty(0)


def _per_token(extras: dict[str, object], input_tokens: int, output_tokens: int) -> dict[str, float]:
    """Energy per output token and cost per million output and total (input + output) tokens,
    derived from the run totals in `extras`."""
    if output_tokens == 0:
        return {}
    derived: dict[str, float] = {}
    energy, cost = extras.get("energy_j"), extras.get("cost_usd")
    if isinstance(energy, int | float):
        derived["joules_per_output_token"] = energy / output_tokens
    if isinstance(cost, int | float):
        derived["usd_per_million_output_tokens"] = cost / output_tokens * 1e6
        derived["usd_per_million_total_tokens"] = cost / (input_tokens + output_tokens) * 1e6
    return derived


def summarize(records: Iterable[RequestRecord], slo: Slo | None = None, **extras: object) -> Summary:
    """The `Summary` of `records` (see `SummaryBuilder.finish` for `extras`)."""
    builder = SummaryBuilder(slo)
    for record in records:
        builder.add(record)
    return builder.finish(**extras)
