"""Time series of a run (metrics/timeseries.py) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from paretoserve.metrics.records import RequestRecord
from paretoserve.metrics.timeseries import (
    TimeBins,
    cdf_points,
    iteration_timelines,
    latency_samples,
    matched_latencies,
    relative_errors,
    request_timelines,
    time_bins,
    tokens_by,
)


def _done(rid: str, arrival: float, first: float, last: float, outputs: int, itl=None) -> RequestRecord:
    return RequestRecord(rid, arrival, 100, outputs, first_token_s=first, last_token_s=last, itl_s=itl)


FAILED = RequestRecord("f", 0.5, 100, 0, error="http_500: boom")


def test_latency_samples_skip_failed_requests_and_flatten_gaps() -> None:
    records = [_done("a", 0.0, 0.25, 1.25, 5, itl=[0.25] * 4), _done("b", 1.0, 1.5, 1.5, 1), FAILED]
    assert latency_samples(records, "ttft").tolist() == [0.25, 0.5]
    assert latency_samples(records, "e2e").tolist() == [1.25, 0.5]
    assert latency_samples(records, "tpot").tolist() == [0.25]  # undefined for one output token
    assert latency_samples(records, "itl").tolist() == [0.25] * 4


def test_cdf_points_are_ranks_over_the_count() -> None:
    x, y = cdf_points(np.array([3.0, 1.0, 2.0]), 400)
    assert x.tolist() == [1.0, 2.0, 3.0]
    assert y.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    x, y = cdf_points(np.arange(1000.0), 11)  # ranks 0, 99.9, ... rounded: every 100th, ends kept
    assert len(x) == 11 and x[0] == 0.0 and x[-1] == 999.0 and y[-1] == 1.0
    assert y[5] == pytest.approx((x[5] + 1) / 1000)


def test_tokens_by_spreads_tokens_between_first_and_last() -> None:
    # 5 tokens: the first at t=1, the other 4 evenly until t=3; 3 tokens all at t=2 (first == last).
    records = [_done("a", 0.0, 1.0, 3.0, 5), _done("b", 0.0, 2.0, 2.0, 3), FAILED]
    produced = tokens_by(records, np.array([0.5, 1.0, 2.0, 2.5, 3.0, 10.0]))
    assert produced.tolist() == pytest.approx([0.0, 1.0, 1 + 2 + 3, 1 + 3 + 3, 5 + 3, 8.0])


def test_request_timelines_count_per_bin() -> None:
    records = [_done("a", 0.0, 1.0, 3.0, 5), _done("b", 0.5, 2.0, 2.0, 3), FAILED]
    bins = time_bins(records, 3)  # 0..3 s: last token of any record
    assert bins.edges.tolist() == [0.0, 1.0, 2.0, 3.0] and bins.width == 1.0
    series = request_timelines(records, bins)
    assert series["completions_per_s"].tolist() == [0.0, 0.0, 2.0]  # both finish in [2, 3]
    # tokens by 0, 1, 2, 3 s: 0; a's first (at exactly 1 s); 3 of a + 3 of b; all 8
    assert series["output_tokens_per_s"].tolist() == pytest.approx([1.0, 5.0, 2.0])
    assert series["in_flight"].tolist() == [2.0, 2.0, 1.0]  # at 0.5, 1.5, 2.5 s


def test_time_bins_end_at_the_arrival_of_a_request_without_tokens() -> None:
    assert time_bins([FAILED], 2).edges.tolist() == [0.0, 0.25, 0.5]
    assert time_bins([], 2).edges[-1] == pytest.approx(1e-3)


def test_iteration_timelines_sum_queues_and_average_kv_over_replicas() -> None:
    # replica 0: steps ending at 1 s (waiting 2, kv 0.2) and 3 s (waiting 4, kv 0.6); replica 1: one
    # step ending at 2 s (waiting 1, kv 0.4).
    columns = {"replica": np.array([0.0, 0.0, 1.0]), "start_s": np.array([0.0, 2.0, 1.0]),
               "duration_s": np.array([1.0, 1.0, 1.0]), "waiting": np.array([2.0, 4.0, 1.0]),
               "kv_used": np.array([0.2, 0.6, 0.4])}
    bins = TimeBins(np.array([0.0, 1.0, 2.0, 3.0, 4.0]))  # centres 0.5, 1.5, 2.5, 3.5
    series = iteration_timelines(columns, bins)
    assert set(series) == {"waiting", "kv_used"}
    assert series["waiting"].tolist() == [0.0, 2.0, 3.0, 5.0]
    assert series["kv_used"].tolist() == pytest.approx([0.0, 0.1, 0.3, 0.5])


def test_matched_latencies_pair_completed_requests_by_id() -> None:
    reference = [_done("a", 0.0, 1.0, 2.0, 3), _done("b", 0.0, 0.5, 1.0, 3), _done("c", 0.0, 1.0, 1.0, 1)]
    other = [_done("b", 0.0, 0.75, 1.5, 3), _done("a", 0.0, 1.5, 2.5, 3),
             RequestRecord("c", 0.0, 100, 0, error="timeout")]
    ref, oth = matched_latencies(reference, other, "ttft")
    assert ref.tolist() == [1.0, 0.5] and oth.tolist() == [1.5, 0.75]
    assert relative_errors(ref, oth).tolist() == pytest.approx([0.5, 0.5])
    assert relative_errors(np.array([0.0, 2.0]), np.array([1.0, 1.0])).tolist() == [0.5]
    empty = matched_latencies(reference, [], "e2e")
    assert empty[0].size == 0 and empty[1].size == 0
