"""Synthetic workloads: arrival statistics, length specs, rescaling, bounds and the context limit."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from itertools import islice

import numpy as np
import pytest

from paretoserve.errors import UserError
from paretoserve.workload import (
    build_workload,
    constant,
    gamma,
    iter_workload,
    load_trace,
    mean_rate,
    parse_lengths,
    poisson,
    ramp,
    rescale,
)


def _gaps(arrivals: object, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    times = arrivals.next_times(rng, 0.0, count)  # type: ignore[attr-defined]
    return np.diff(np.concatenate([[0.0], times]))


def _cv(values: np.ndarray) -> float:
    return float(values.std() / values.mean())


def test_poisson_gaps_mean_and_cv() -> None:
    gaps = _gaps(poisson(4.0), 400_000)
    assert gaps.mean() == pytest.approx(0.25, rel=0.01)
    assert _cv(gaps) == pytest.approx(1.0, rel=0.01)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 3.0])
def test_gamma_gaps_match_requested_cv(cv: float) -> None:
    gaps = _gaps(gamma(10.0, cv), 400_000, seed=1)
    assert gaps.mean() == pytest.approx(0.1, rel=0.02)
    assert _cv(gaps) == pytest.approx(cv, rel=0.03)


def test_constant_gaps_exact() -> None:
    gaps = _gaps(constant(8.0), 1000)
    assert np.allclose(gaps, 0.125, rtol=0, atol=1e-9)


def test_ramp_follows_the_integrated_rate() -> None:
    # Rate 0 -> 100 req/s over 100 s: Λ(t) = t² / 2, so 1,250 expected in [0, 50) and 5,000 in [0, 100).
    times = np.array([r.arrival_s for r in build_workload(
        None, arrival="ramp:0:100", duration_s=100, prompt="1", output="1", seed=3)])
    assert (times < 50).sum() == pytest.approx(1250, abs=5 * 1250 ** 0.5)
    assert len(times) == pytest.approx(5000, abs=5 * 5000 ** 0.5)
    assert times.max() < 100


def test_ramp_down_to_zero_ends() -> None:
    process = ramp(10.0, 0.0, 100.0)
    times = list(process.iter_times(np.random.default_rng(0)))  # finite: no arrivals after 100 s
    assert max(times) < 100
    assert len(times) == pytest.approx(500, abs=5 * 500 ** 0.5)


def test_ramp_with_request_count_spans_the_matching_time() -> None:
    workload = build_workload(None, arrival="ramp:2:6", requests=400, prompt="1", output="1")
    assert len(workload) == 400
    assert workload[-1].arrival_s == pytest.approx(100, rel=0.1)  # mean rate 4 req/s -> 100 s


def test_same_seed_same_workload_and_streams_are_independent() -> None:
    args = {"arrival": "poisson", "rate": 3.0, "requests": 500}
    first = build_workload("azure-conv", seed=7, **args)
    assert first == build_workload("azure-conv", seed=7, **args)
    assert first != build_workload("azure-conv", seed=8, **args)
    # Changing the arrival process keeps the lengths of the same seed.
    other = build_workload("azure-conv", seed=7, arrival="gamma:2", rate=3.0, requests=500)
    assert [(r.prompt_tokens, r.output_tokens) for r in first] == [
        (r.prompt_tokens, r.output_tokens) for r in other]


def test_lengths_resampled_jointly_from_trace() -> None:
    pairs = {(r.prompt_tokens, r.output_tokens) for r in load_trace("azure-code")}
    workload = build_workload("azure-code", arrival="poisson", rate=5, requests=2000)
    assert all((r.prompt_tokens, r.output_tokens) in pairs for r in workload)
    assert all(r.prefix_hashes == () for r in build_workload("mooncake-conv", arrival="poisson", requests=50))


def test_length_specs() -> None:
    rng = np.random.default_rng(0)
    assert parse_lengths("128").sample(rng, 3).tolist() == [128, 128, 128]
    assert parse_lengths("fixed:7").sample(rng, 2).tolist() == [7, 7]
    uniform = parse_lengths("uniform:3:5").sample(rng, 10_000)
    assert set(uniform.tolist()) == {3, 4, 5}
    lognormal = parse_lengths("lognormal:500:0.8").sample(rng, 200_000)
    assert lognormal.mean() == pytest.approx(500, rel=0.02)
    assert lognormal.min() >= 1


@pytest.mark.parametrize("spec", ["", "abc", "fixed:0", "fixed:1.5", "uniform:5:3", "uniform:1",
                                  "lognormal:0.5:1", "lognormal:100:-1", "normal:1:2"])
def test_bad_length_specs(spec: str) -> None:
    with pytest.raises(UserError, match="expected N, fixed:N, uniform:A:B or lognormal:MEAN:SIGMA"):
        parse_lengths(spec)


def test_rescale_to_rate_and_by_factor() -> None:
    trace = load_trace("azure-conv")
    faster = rescale(trace, 20.0)
    assert mean_rate(faster) == pytest.approx(20.0, rel=1e-12)
    halved = rescale(trace, rate_scale=0.5)
    assert halved[-1].arrival_s == pytest.approx(2 * trace[-1].arrival_s)
    assert [r.prompt_tokens for r in halved] == [r.prompt_tokens for r in trace]
    with pytest.raises(UserError):
        rescale(trace, 2.0, rate_scale=2.0)


def test_trace_workload_rate_and_bounds() -> None:
    native = load_trace("azure-conv")
    assert build_workload("azure-conv") == native
    fast = build_workload("azure-conv", rate=10.0)
    assert mean_rate(fast) == pytest.approx(10.0)
    assert len(build_workload("azure-conv", requests=100)) == 100
    within = build_workload("azure-conv", duration_s=60)
    assert within == [r for r in native if r.arrival_s < 60]
    scaled = build_workload("azure-conv", rate_scale=2.0, requests=10)
    assert [r.arrival_s for r in scaled] == pytest.approx([r.arrival_s / 2 for r in native[:10]])


def test_trace_workload_with_length_override_keeps_arrivals() -> None:
    native = load_trace("azure-code")[:50]
    workload = build_workload("azure-code", requests=50, output="fixed:16")
    assert [r.arrival_s for r in workload] == [r.arrival_s for r in native]
    assert [r.prompt_tokens for r in workload] == [r.prompt_tokens for r in native]
    assert {r.output_tokens for r in workload} == {16}


def test_context_limit_error_truncate_and_drop() -> None:
    with pytest.raises(UserError, match=r"request '0'.*exceed the context limit of 4096 tokens"):
        build_workload("azure-code", requests=5, max_context=4096)  # first request: 4808 + 10 tokens
    truncated = build_workload("azure-code", requests=200, max_context=4096, overflow="truncate")
    assert max(r.prompt_tokens + r.output_tokens for r in truncated) == 4096
    assert truncated[0].prompt_tokens == 4096 - 10
    dropped = build_workload("azure-code", requests=200, max_context=4096, overflow="drop")
    assert len(dropped) == 200
    assert all(r.prompt_tokens + r.output_tokens <= 4096 for r in dropped)


def test_streaming_variant_is_lazy_and_equal() -> None:
    args = {"arrival": "gamma:2", "rate": 50.0, "requests": 10_000, "prompt": "uniform:1:100",
            "output": "lognormal:50:1", "seed": 4}
    stream = iter_workload(**args)
    assert isinstance(stream, Iterator)
    assert list(stream) == build_workload(None, **args)


def test_streaming_million_requests_is_not_materialised() -> None:
    stream = iter_workload(arrival="poisson", rate=100.0, requests=1_000_000, prompt="100", output="10")
    tracemalloc.start()
    for _ in islice(stream, 100_000):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8_000_000  # a list of 100,000 requests takes ~20 MB


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"arrival": "poisson", "rate": 1.0}, "needs a number of requests or a duration"),
    ({"arrival": "weibull", "requests": 5}, "expected trace, poisson, gamma:CV"),
    ({"arrival": "gamma", "rate": 1.0, "requests": 5}, "expected trace, poisson, gamma:CV"),
    ({"arrival": "poisson", "requests": 5, "prompt": "10", "output": "10"}, "needs a rate"),
    ({"arrival": "poisson", "rate": 1.0, "requests": 5, "prompt": "10"}, "give both prompt and output"),
    ({"arrival": "trace"}, "arrival 'trace' needs a trace"),
    ({"arrival": "poisson", "rate": -1.0, "requests": 5, "prompt": "1", "output": "1"}, "rate must be"),
    ({"arrival": "gamma:0", "rate": 1.0, "requests": 5, "prompt": "1", "output": "1"}, "burstiness"),
])
def test_bad_synthetic_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_workload(None, **kwargs)  # type: ignore[arg-type]


def test_trace_too_short_for_requests() -> None:
    with pytest.raises(UserError, match="has 8819 requests, fewer than the 9000"):
        build_workload("azure-code", requests=9000)


def test_rate_is_delivered_on_the_requests_kept() -> None:
    """The first N requests are taken, then rescaled: they (not the whole trace) arrive at the rate."""
    native = load_trace("azure-conv")
    kept = build_workload("azure-conv", rate=10.0, requests=200)
    assert [r.request_id for r in kept] == [r.request_id for r in native[:200]]
    assert (len(kept) - 1) / (kept[-1].arrival_s - kept[0].arrival_s) == pytest.approx(10.0, rel=1e-12)
    # the gaps keep their proportions
    gaps = [b.arrival_s - a.arrival_s for a, b in zip(native[:200], native[1:200], strict=False)]
    kept_gaps = [b.arrival_s - a.arrival_s for a, b in zip(kept, kept[1:], strict=False)]
    factor = gaps[0] / kept_gaps[0]
    assert kept_gaps == pytest.approx([g / factor for g in gaps])
