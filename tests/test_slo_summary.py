"""SLO parsing and per-request checks; summary statistics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from paretoserve.errors import UserError
from paretoserve.metrics import RequestRecord, Slo, SloTarget, Summary, SummaryBuilder, parse_slo, summarize
from paretoserve.metrics.summary import weighted_percentiles
from paretoserve.report.tables import print_summary


def _record(rid: str, arrival: float, ttft: float, e2e: float, out: int = 11, **kw: object) -> RequestRecord:
    return RequestRecord(rid, arrival, 100, out, first_token_s=arrival + ttft, last_token_s=arrival + e2e,
                         **kw)  # type: ignore[arg-type]


# --- SLO ----------------------------------------------------------------------------------------


def test_parse_units_and_percentiles() -> None:
    slo = parse_slo("ttft_p90=2s,tpot_p90=80ms,e2e_p99=30s")
    assert slo.targets == (
        SloTarget("ttft", 90, 2.0), SloTarget("tpot", 90, 0.08), SloTarget("e2e", 99, 30.0))
    assert (slo.ttft_s, slo.tpot_s, slo.e2e_s) == (2.0, 0.08, 30.0)
    assert slo.attainment_target == 0.9  # percentiles differ: the default
    assert parse_slo("tpot_p99=500us").tpot_s == pytest.approx(500e-6)
    assert parse_slo(" ttft_p50 = 1.5 ").ttft_s == 1.5  # bare number: seconds
    assert parse_slo("ttft_p99=1s,tpot_p99=50ms").attainment_target == 0.99  # the shared percentile
    assert parse_slo("ttft_p90=1s,attainment=0.75").attainment_target == 0.75


@pytest.mark.parametrize("text", [
    "ttft_p90=2s,tpot_p90=80ms,e2e_p99=30s", "ttft_p99=0.07", "tpot_p95=1e-7s", "e2e_p50=33.3ms",
    "ttft_p90=1s,attainment=0.5", "e2e_p90=123.456789s"])
def test_str_round_trips(text: str) -> None:
    slo = parse_slo(text)
    assert parse_slo(str(slo)) == slo
    assert str(parse_slo(str(slo))) == str(slo)


def test_str_of_constructed_slo() -> None:
    slo = Slo((SloTarget("ttft", 90, 0.07), SloTarget("tpot", 90, 0.0123)), attainment_target=0.95)
    assert str(slo) == "ttft_p90=70ms,tpot_p90=12.3ms,attainment=0.95"
    assert parse_slo(str(slo)) == slo


@pytest.mark.parametrize("text", ["", "ttft=2s", "ttft_p90", "ttft_p80=1s", "latency_p90=1s",
                                  "ttft_p90=fast", "ttft_p90=-1s", "ttft_p90=0", "ttft_p90=2h",
                                  "ttft_p90=1s,ttft_p99=2s", "ttft_p90=1s,attainment=1.5", "attainment=0.9"])
def test_bad_slo_strings(text: str) -> None:
    with pytest.raises(UserError) as info:
        parse_slo(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["itl_p99=50ms", "ttft_p90=1s,itl_p90=20ms", "ITL_p50=1s"])
def test_itl_objective_is_refused(text: str) -> None:
    # Every metric the parser accepts is applied per request; ITL could not be (simulated runs
    # record no per-request gaps), so it is refused with the accepted metrics listed.
    with pytest.raises(UserError, match=r"ITL is not an objective.*METRIC in ttft, tpot, e2e and"):
        parse_slo(text)


def test_every_accepted_metric_is_judged_per_request() -> None:
    # One request: TTFT 1 s, E2E 3 s, 11 tokens -> TPOT 0.2 s. Each objective alone, just below and
    # just above the request's value, flips the verdict.
    record = _record("a", 0.0, 1.0, 3.0)
    for metric, value in (("ttft", 1.0), ("tpot", 0.2), ("e2e", 3.0)):
        assert parse_slo(f"{metric}_p90={value * 1.01}").request_ok(record)
        assert not parse_slo(f"{metric}_p90={value * 0.99}").request_ok(record)


def test_bad_slo_explains_grammar() -> None:
    with pytest.raises(UserError, match=r"METRIC_pNN=VALUE\[s\|ms\|us\]"):
        parse_slo("ttft=2s")


def test_request_ok() -> None:
    slo = parse_slo("ttft_p90=1s,tpot_p90=100ms,e2e_p90=5s")
    assert slo.request_ok(_record("a", 0, 1.0, 2.0))  # TPOT = 1 s / 10 = 100 ms: on the threshold
    assert not slo.request_ok(_record("b", 0, 1.01, 2.0))  # TTFT too long
    assert not slo.request_ok(_record("c", 0, 0.5, 2.0))  # TPOT 150 ms
    assert not slo.request_ok(_record("d", 0, 0.5, 5.5, out=100))  # E2E 5.5 s
    assert slo.request_ok(_record("e", 0, 0.5, 0.5, out=1))  # one token: no TPOT
    assert slo.request_ok(_record("f", 0, 0.5, 1.0, itl_s=[0.5] * 10))  # TPOT 50 ms; gaps are no objective
    assert not slo.request_ok(RequestRecord("g", 0, 100, 0, error="timeout"))
    assert not slo.request_ok(_record("h", 0, 0.1, 0.2, error="stream cut"))


# --- percentiles and summaries ------------------------------------------------------------------


def test_percentiles_of_hand_made_list() -> None:
    # TTFT 1..10 s: linear interpolation at h = 9 q: p50 = 5.5, p90 = 9.1, p95 = 9.55, p99 = 9.91.
    records = [_record(str(i), 0.0, float(i), float(i) + 1.0) for i in range(1, 11)]
    ttft = summarize(records).ttft
    assert ttft.count == 10
    assert (ttft.mean, ttft.p50, ttft.max) == (5.5, 5.5, 10.0)
    assert ttft.p90 == pytest.approx(9.1)
    assert ttft.p95 == pytest.approx(9.55)
    assert ttft.p99 == pytest.approx(9.91)


def test_weighted_itl_percentiles_by_hand() -> None:
    builder = SummaryBuilder()
    builder.add_itl(0.01, 3)  # one decode step of 10 ms over 3 sequences
    builder.add_itl(0.02, 1)
    builder.add_itl(0.5, 0)  # no sequences: no samples
    itl = builder.finish().itl
    # Samples 10, 10, 10, 20 ms: p50 at h = 1.5 -> 10 ms; p90 at h = 2.7 -> 17 ms; p99 at 2.97 -> 19.7 ms.
    assert itl.count == 4
    assert itl.mean == pytest.approx(0.0125)
    assert itl.p50 == pytest.approx(0.01)
    assert itl.p90 == pytest.approx(0.017)
    assert itl.p99 == pytest.approx(0.0197)
    assert itl.max == 0.02


def test_weighted_percentiles_equal_numpy_on_the_expanded_list() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        size = int(rng.integers(1, 20))
        values, counts = rng.random(size) * 100, rng.integers(0, 6, size)
        counts[0] += 1
        quantiles = [0.0, 50.0, 90.0, 95.0, 99.0, 100.0, float(rng.random() * 100)]
        expected = np.percentile(np.repeat(values, counts), quantiles)
        assert weighted_percentiles(values, counts, quantiles) == expected.tolist()


def test_itl_from_records_and_tpot() -> None:
    records = [_record("a", 0.0, 0.5, 1.5, out=3, itl_s=[0.25, 0.75]), _record("b", 1.0, 1.0, 1.0, out=1)]
    summary = summarize(records)
    assert summary.itl.count == 2 and summary.itl.mean == 0.5
    assert summary.tpot.count == 1 and summary.tpot.mean == 0.5  # (1.5 - 0.5) / (3 - 1)


def test_goodput_and_attainment_of_hand_made_records() -> None:
    slo = parse_slo("ttft_p90=1s,tpot_p90=100ms")
    records = [
        _record("good1", 0.0, 0.5, 1.5),  # TPOT 100 ms
        _record("good2", 2.0, 0.2, 0.7),  # TPOT 50 ms
        _record("slow", 4.0, 3.0, 4.0),  # TTFT 3 s
        RequestRecord("failed", 6.0, 100, 0, error="http 500"),
        _record("good3", 9.0, 0.5, 1.0, preemptions=2),  # ends at 10 s
    ]
    summary = summarize(records, slo)
    assert (summary.requests, summary.completed, summary.failed) == (5, 4, 1)
    assert summary.duration_s == 10.0  # first arrival 0 s -> last token 10 s
    assert summary.goodput_rps == pytest.approx(0.3)  # 3 good requests in 10 s
    assert summary.slo_attainment == pytest.approx(0.6)  # 3 of 5
    assert summary.requests_per_s == pytest.approx(0.4)
    assert summary.output_tokens == 44 and summary.output_tokens_per_s == pytest.approx(4.4)
    assert summary.input_tokens_per_s == pytest.approx(40.0)
    assert summary.preemptions_total == 2
    assert summary.slo == "ttft_p90=1s,tpot_p90=100ms"
    assert slo.met_by(summary) is False  # p90 TTFT is 2.55 s
    assert parse_slo("ttft_p50=600ms,tpot_p90=100ms").met_by(summary)


def test_no_slo_no_goodput_and_empty_run() -> None:
    summary = summarize([_record("a", 0, 0.1, 0.2)])
    assert summary.goodput_rps is None and summary.slo_attainment is None and summary.slo is None
    empty = summarize([])
    assert empty.requests == 0 and empty.ttft.p90 is None and empty.output_tokens_per_s == 0.0
    assert not parse_slo("ttft_p90=1s").met_by(empty)


def test_energy_and_cost_per_token_and_json_round_trip() -> None:
    records = [_record("a", 0.0, 0.1, 1.0, out=1000), _record("b", 0.5, 0.1, 1.5, out=1000)]
    summary = summarize(records, energy_j=400.0, cost_usd=0.02, kv_peak_fraction=0.5, estimated=True)
    assert summary.joules_per_output_token == pytest.approx(0.2)
    assert summary.usd_per_million_output_tokens == pytest.approx(10.0)
    assert summary.estimated
    assert Summary.model_validate_json(summary.model_dump_json()) == summary
    with pytest.raises(ValueError):
        summarize(records, energy=1.0)  # unknown field


def test_summary_table_mentions_estimates_and_slo() -> None:
    records = [_record("a", 0.0, 0.1, 1.0, out=1000)]
    summary = summarize(records, parse_slo("ttft_p90=1s"), energy_j=1.0, estimated=True)
    console = Console(record=True, width=100)
    print_summary(summary, title="run a", console=console)
    text = console.export_text()
    assert "estimated by simulation" in text and "ttft_p90=1s" in text
    assert "100.0" in text  # TTFT 100 ms
    assert "J / output tok" in text
