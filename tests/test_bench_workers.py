"""Multi-process load generation, send-lag accounting and the client-saturation flag (fake server)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from paretoserve.bench.client import ClientConfig
from paretoserve.bench.eventloop import dumps, loads
from paretoserve.bench.eventloop import run as run_loop
from paretoserve.bench.fakeserver import FakeServer, FakeServerConfig
from paretoserve.bench.loadgen import Job, LoadShape
from paretoserve.bench.prompts import Prompt
from paretoserve.bench.runner import BenchSpec, run_bench
from paretoserve.bench.workers import run_load_workers, split
from paretoserve.errors import UserError
from paretoserve.metrics.records import RequestRecord
from paretoserve.metrics.summary import CLIENT_LAG_BOUND_S, summarize
from paretoserve.report.tables import summary_table
from paretoserve.runs import read_run
from paretoserve.workload.request import Request
from servers import _fake_server_fixture  # noqa: F401


def _jobs(arrivals: list[float], max_tokens: int = 4) -> list[Job]:
    return [Job(Request(str(i), t, 3, max_tokens), Prompt("a b c", 3, False), max_tokens)
            for i, t in enumerate(arrivals)]


def test_split_deals_jobs_round_robin_and_concurrency_evenly() -> None:
    jobs = _jobs([0.1 * i for i in range(7)])
    shares = split(jobs, LoadShape(5, open_loop=False), 3)
    assert [[j.request.request_id for j in share] for share, _ in shares] == [["0", "3", "6"], ["1", "4"], ["2", "5"]]
    assert [shape.concurrency for _, shape in shares] == [2, 2, 1]  # 5 = 2 + 2 + 1
    assert all(shape.open_loop is False for _, shape in shares)
    with pytest.raises(UserError, match="at least 4"):
        split(jobs, LoadShape(3, open_loop=False), 4)


def test_workers_send_on_one_schedule_and_record_every_request_once(fake_server) -> None:
    """Two processes share one run start: every arrival lands on its schedule (± 50 ms) relative
    to the one t0, and each request is recorded exactly once."""
    arrivals = [0.05 * i for i in range(20)]
    records: list[RequestRecord] = []
    t0 = run_loop(run_load_workers(_jobs(arrivals), ClientConfig(fake_server.url, "fake"), LoadShape(),
                                   records.append, workers=2))
    assert t0 <= time.monotonic()
    assert sorted(int(r.request_id) for r in records) == list(range(20))
    for record in records:
        assert record.ok, record.error
        assert record.arrival_s == pytest.approx(arrivals[int(record.request_id)], abs=0.05)
        assert 0 <= float(record.extra["lag_s"]) < 0.05  # type: ignore[arg-type]


def test_closed_loop_over_workers_keeps_the_total_concurrency() -> None:
    with FakeServer(FakeServerConfig(token_interval_s=0.01)) as server:
        records: list[RequestRecord] = []
        run_loop(run_load_workers(_jobs([0.0] * 12, max_tokens=5), ClientConfig(server.url, "fake"),
                                  LoadShape(4, open_loop=False), records.append, workers=2))
        assert server.max_streams == 4
    assert len(records) == 12 and all(r.ok for r in records)


def test_bench_with_workers_writes_one_ordinary_run(fake_server, tmp_path: Path) -> None:
    spec = BenchSpec(url=fake_server.url, model="fake", arrival="constant", rate=50.0, requests=30,
                     prompt="8", output="4", tokenize=False, workers=2)
    summary = run_bench(spec, tmp_path / "run")
    run = read_run(tmp_path / "run")
    assert summary.requests == summary.completed == 30
    assert sorted(int(r.request_id) for r in run.records) == list(range(30))
    assert run.config["workers"] == 2
    assert summary.send_lag is not None and summary.send_lag.count == 30


def _record(i: int, lag: float, slot_wait: float | None = None) -> RequestRecord:
    extra: dict[str, object] = {"lag_s": lag}
    if slot_wait is not None:
        extra["slot_wait_s"] = slot_wait
    return RequestRecord(str(i), i * 0.1, 10, 5, first_token_s=i * 0.1 + 0.05, last_token_s=i * 0.1 + 0.09,
                         extra=extra)


def test_send_lag_excludes_slot_waits_and_flags_a_client_that_fell_behind() -> None:
    """Hand example: lags 1..100 ms, of which 99 ms of the last one was waiting for a slot; the
    client's own lags are then 1..99 ms and 1 ms; sorted, p99 sits at rank 99 × 0.99 = 98.01,
    between 98 and 99 ms: 98.01 ms, above the bound."""
    records = [_record(i, (i + 1) * 1e-3) for i in range(99)] + [_record(99, 0.100, slot_wait=0.099)]
    summary = summarize(records)
    assert summary.send_lag is not None
    assert summary.send_lag.max == pytest.approx(0.099)
    assert summary.send_lag.p99 == pytest.approx(0.09801, abs=1e-9)
    assert summary.client_kept_up is False
    caption = summary_table(summary, title="t").caption
    assert caption is not None and "did not keep up" in str(caption)
    on_time = summarize([_record(i, CLIENT_LAG_BOUND_S / 2) for i in range(10)])
    assert on_time.client_kept_up is True
    assert summarize([RequestRecord("a", 0.0, 1, 1, first_token_s=0.1, last_token_s=0.1)]).send_lag is None


def test_json_codec_round_trips() -> None:
    body = {"model": "m", "prompt": [1, 2, 3], "stream": True, "x": {"y": 0.5, "z": "é"}}
    assert loads(dumps(body)) == body


def test_bench_refuses_more_workers_than_concurrency(tmp_path: Path) -> None:
    spec = BenchSpec(url="http://127.0.0.1:9/v1", model="fake", concurrency=2, requests=4, prompt="8",
                     output="4", workers=3)
    with pytest.raises(UserError, match="--workers 3 needs --concurrency of at least 3"):
        spec.validate()


def test_cancelled_worker_run_records_requests_in_flight_as_interrupted() -> None:
    """Requests of 200 tokens at 10 ms each cannot finish in 0.5 s: cancelling the run must still
    give one record per sent request, the unfinished ones marked `interrupted`."""
    import asyncio

    with FakeServer(FakeServerConfig(token_interval_s=0.01)) as server:
        records: list[RequestRecord] = []

        async def main() -> None:
            task = asyncio.ensure_future(run_load_workers(
                _jobs([0.0] * 4, max_tokens=200), ClientConfig(server.url, "fake"), LoadShape(), records.append,
                workers=2))
            deadline = time.monotonic() + 60
            while server.max_streams < 4 and time.monotonic() < deadline:  # all four are streaming
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        run_loop(main())
    assert sorted(r.request_id for r in records) == ["0", "1", "2", "3"]
    assert all(r.error is not None and r.error.startswith("interrupted") for r in records)
