"""The streaming client, SSE parsing, token counting, prompts and load shapes (against the fake server)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from paretoserve.bench.client import (
    ClientConfig,
    SseParser,
    StreamResult,
    _StreamState,
    build_body,
    itl_from_chunks,
    make_session,
    stream_request,
    to_record,
)
from paretoserve.bench.fakeserver import FakeServer, FakeServerConfig
from paretoserve.bench.loadgen import (
    Job,
    LiveStats,
    LoadShape,
    StepResult,
    SweepCriterion,
    run_load,
    step_result,
)
from paretoserve.bench.prompts import Prompt, build_prompts, probe_tokenizer, prompt_words
from paretoserve.bench.runner import BenchSpec, run_bench
from paretoserve.cli import commands  # noqa: F401  (registers the commands on `app`)
from paretoserve.cli.app import app
from paretoserve.metrics.records import RequestRecord
from paretoserve.runs import read_run
from paretoserve.workload.request import Request
from servers import _fake_server_fixture  # noqa: F401

# ---------------------------------------------------------------------------------------------
# SSE parsing


EVENTS = [b'{"a":1}', b'{"b":"x y"}', b"[DONE]"]
STREAM = b'data: {"a":1}\r\n\r\n: a comment\nevent: message\ndata:{"b":"x y"}\n\ndata: [DONE]\n\n'


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=8))
def test_sse_parser_is_independent_of_chunk_boundaries(cuts: list[int]) -> None:
    parser = SseParser()
    bounds = [0, *sorted(cuts), len(STREAM)]
    events = [e for lo, hi in zip(bounds, bounds[1:], strict=False) for e in parser.feed(STREAM[lo:hi])]
    assert events + parser.close() == EVENTS


def test_sse_parser_joins_data_lines_and_flushes_unterminated_event() -> None:
    parser = SseParser()
    assert parser.feed(b'data: {"x":1}\n\n') == [b'{"x":1}']  # one whole event per read
    assert parser.feed(b"data: a\ndata: b\n\n") == [b"a\nb"]
    assert parser.feed(b"data: line1\ndata: line2\n\ndata: tail") == [b"line1\nline2"]
    assert parser.close() == [b"tail"]
    assert parser.close() == []


# ---------------------------------------------------------------------------------------------
# Token counting, ITL, records


def test_itl_splits_multi_token_events_evenly() -> None:
    times = [1.0, 1.3, 1.4]
    tokens = [2, 3, 1]
    gaps = itl_from_chunks(times, tokens)
    assert gaps == pytest.approx([0.0, 0.1, 0.1, 0.1, 0.1])
    assert len(gaps) == sum(tokens) - 1
    assert sum(gaps) == pytest.approx(times[-1] - times[0])


def test_record_prefers_server_usage_and_keeps_what_differs() -> None:
    result = StreamResult(start_s=10.0, chunk_times_s=[10.5, 10.7], chunk_tokens=[1, 1],
                          finish_reason="length", usage={"prompt_tokens": 9, "completion_tokens": 3})
    record = to_record("r", result, t0_s=9.0, prompt_tokens=8, max_tokens=3, extra={"lag_s": 0.001})
    assert record.arrival_s == pytest.approx(1.0)
    assert record.ttft_s == pytest.approx(0.5)
    assert record.e2e_s == pytest.approx(0.7)
    assert record.prompt_tokens == 9 and record.extra["prompt_tokens_requested"] == 8
    assert record.output_tokens == 3 and record.extra["stream_tokens"] == 2
    assert record.extra["finish_reason"] == "length" and record.extra["lag_s"] == 0.001
    assert record.tpot_s == pytest.approx(0.1)


def test_body_asks_for_usage_and_exact_length() -> None:
    config = ClientConfig("http://h/v1", "m", extra_body={"temperature": 0})
    body = build_body(config, "hi", 7)
    assert body == {"model": "m", "max_tokens": 7, "stream": True, "prompt": "hi",
                    "stream_options": {"include_usage": True}, "ignore_eos": True, "min_tokens": 7,
                    "temperature": 0}
    chat = build_body(ClientConfig("http://h/v1", "m", "chat", ignore_eos=False), "hi", 7)
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and "ignore_eos" not in chat


async def _one(config: ClientConfig, prompt: str, max_tokens: int) -> StreamResult:
    async with make_session(config) as session:
        return await stream_request(session, config, prompt, max_tokens)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_streams_one_token_per_event(fake_server: FakeServer, endpoint: str) -> None:
    config = ClientConfig(fake_server.url, "fake", endpoint, timeout_s=5)  # type: ignore[arg-type]
    result = asyncio.run(_one(config, "a b c d", 12))
    assert result.error is None and result.finish_reason == "length"
    assert result.chunk_tokens == [1] * 12
    assert result.usage == {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16}
    assert result.start_s < result.chunk_times_s[0] <= result.chunk_times_s[-1] <= (result.end_s or 0)


def test_counts_tokens_from_cumulative_usage() -> None:
    with FakeServer(FakeServerConfig(tokens_per_event=3)) as server:
        config = ClientConfig(server.url, "fake", timeout_s=5,
                              extra_body={"stream_options": {"include_usage": True,
                                                             "continuous_usage_stats": True}})
        result = asyncio.run(_one(config, "a b", 10))
    assert result.error is None
    assert result.chunk_tokens == [3, 3, 3, 1]
    record = to_record("r", result, t0_s=result.start_s, prompt_tokens=2, max_tokens=10)
    assert record.output_tokens == 10 and "stream_tokens" not in record.extra
    assert record.itl_s is not None and len(record.itl_s) == 9


def test_sends_api_key_and_headers() -> None:
    with FakeServer(FakeServerConfig(api_key="sekret")) as server:
        denied = asyncio.run(_one(ClientConfig(server.url, "fake", timeout_s=5), "a", 2))
        config = ClientConfig(server.url, "custom-model", api_key="sekret", headers={"X-Team": "perf"},
                              timeout_s=5)
        allowed = asyncio.run(_one(config, "a", 2))
        headers = server.seen_headers[-1]
    assert denied.error is not None and denied.error.startswith("http_401: invalid api key")
    assert allowed.error is None and allowed.streamed_tokens == 2
    assert headers["authorization"] == "Bearer sekret" and headers["x-team"] == "perf"


# ---------------------------------------------------------------------------------------------
# Prompts


def test_prompts_are_exact_with_a_tokenizer_and_share_prefix_blocks(fake_server: FakeServer) -> None:
    requests = [Request("a", 0.0, 40, 4, prefix_hashes=(7, 8), prefix_block_tokens=16),
                Request("b", 0.0, 37, 4, prefix_hashes=(7, 9), prefix_block_tokens=16),
                Request("c", 0.0, 5, 4)]

    async def build() -> tuple[str | None, list[Prompt]]:
        config = ClientConfig(fake_server.url, "fake")
        async with make_session(config) as session:
            tokenizer = await probe_tokenizer(session, fake_server.url, "fake")
            prompts = await build_prompts(requests, seed=3, session=session, tokenizer=tokenizer)
        return (tokenizer.style if tokenizer else None), prompts

    style, prompts = asyncio.run(build())
    assert style == "vllm"
    assert [p.tokens for p in prompts] == [40, 37, 5] and all(p.exact for p in prompts)
    words = [p.text.split() for p in prompts]
    assert words[0][:16] == words[1][:16] and words[0][16:32] != words[1][16:32]
    assert words[0][:5] != words[2][:5]


def test_prompts_without_tokenizer_are_marked_approximate() -> None:
    request = Request("x", 0.0, 12, 4)
    (prompt,) = asyncio.run(build_prompts([request], seed=1))
    assert prompt.tokens == 12 and not prompt.exact and len(prompt.text.split()) == 12
    assert prompt_words(request, 12, 1) == prompt.text.split()  # deterministic


# ---------------------------------------------------------------------------------------------
# Load shapes


def _jobs(arrivals: list[float], max_tokens: int = 4) -> list[Job]:
    return [Job(Request(str(i), t, 3, max_tokens), Prompt("a b c", 3, False), max_tokens)
            for i, t in enumerate(arrivals)]


def test_open_loop_sends_on_schedule(fake_server: FakeServer) -> None:
    arrivals = [0.0, 0.1, 0.25, 0.4, 0.6]
    records: list[RequestRecord] = []
    asyncio.run(run_load(_jobs(arrivals), ClientConfig(fake_server.url, "fake"), LoadShape(), records.append))
    by_id = {r.request_id: r for r in records}
    for i, arrival in enumerate(arrivals):
        record = by_id[str(i)]
        assert record.ok
        assert record.arrival_s == pytest.approx(arrival, abs=0.05)
        assert 0 <= float(record.extra["lag_s"]) < 0.05  # type: ignore[arg-type]


def test_fixed_concurrency_keeps_that_many_in_flight() -> None:
    with FakeServer(FakeServerConfig(token_interval_s=0.01)) as server:
        records: list[RequestRecord] = []
        start = time.monotonic()
        asyncio.run(run_load(_jobs([0.0] * 12, max_tokens=5), ClientConfig(server.url, "fake"),
                             LoadShape(3, open_loop=False), records.append))
        elapsed = time.monotonic() - start
        assert server.max_streams == 3
    assert len(records) == 12 and all(r.ok for r in records)
    assert elapsed > 4 * 5 * 0.01  # 12 requests, 3 at a time, >= 50 ms each


def test_duration_stops_sending(fake_server: FakeServer) -> None:
    records: list[RequestRecord] = []
    asyncio.run(run_load(_jobs([0.0, 0.05, 0.5, 1.0]), ClientConfig(fake_server.url, "fake"),
                         LoadShape(duration_s=0.3), records.append))
    assert sorted(r.request_id for r in records) == ["0", "1"]


def _step(rate: float, achieved: float, ttft: float | None = 0.1, errors: float = 0.0) -> StepResult:
    return StepResult(rate, achieved, achieved * 10, ttft, errors)


def test_sweep_stops_when_throughput_stalls_latency_explodes_or_errors_grow() -> None:
    criterion = SweepCriterion()
    assert criterion.rates(1.5)[:3] == [1.5, 3.0, 6.0]
    assert criterion.stop_reason([_step(1, 1.0), _step(2, 1.95)]) is None
    assert "stopped growing" in (criterion.stop_reason([_step(1, 1), _step(2, 1.9), _step(4, 2.0)]) or "")
    assert "TTFT" in (criterion.stop_reason([_step(1, 1, 0.1), _step(2, 2, 1.5)]) or "")
    assert criterion.stop_reason([_step(1, 1, 0.01), _step(2, 2, 0.2)]) is None  # below the floor
    assert "failed" in (criterion.stop_reason([_step(1, 1, errors=0.5)]) or "")
    assert "8 steps" in (criterion.stop_reason([_step(2 ** i, 2 ** i) for i in range(8)]) or "")


def test_step_result_measures_achieved_rate() -> None:
    records = [RequestRecord(str(i), i * 0.5, 3, 4, first_token_s=i * 0.5 + 0.1, last_token_s=i * 0.5 + 0.5)
               for i in range(4)]
    records.append(RequestRecord("bad", 0.2, 3, 0, error="http_500: x"))
    step = step_result(2.0, records)
    assert step.achieved_rps == pytest.approx(4 / 2.0)
    assert step.output_tokens_per_s == pytest.approx(16 / 2.0)
    assert step.ttft_p50_s == pytest.approx(0.1) and step.error_fraction == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_bench_writes_a_run_folder(fake_server: FakeServer, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "bench", "--url", fake_server.url, "--prompt", "uniform:4:12", "--output", "6", "--requests", "25",
        "--rate", "200", "--arrival", "gamma:2", "--slo", "ttft_p90=1s", "--header", "X-A: b",
        "--api-key", "k", "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    run = read_run(out)
    assert len(run.records) == 25 and all(r.ok and r.output_tokens == 6 for r in run.records)
    assert all(4 <= r.prompt_tokens <= 12 for r in run.records)
    assert run.config["model"] == "fake" and run.config["arrival"] == "gamma:2"
    assert run.config["prompt_tokens_exact"] is True and run.config["api_key"] == "<set>"
    assert run.config["headers"] == ["X-A"] and "k" not in json.dumps(run.config["headers"])
    assert run.summary is not None and run.summary["slo_attainment"] == 1.0


def test_cli_sweep_writes_one_run_per_rate(fake_server: FakeServer, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "bench", "--url", fake_server.url, "--model", "fake", "--prompt", "4", "--output", "4",
        "--requests", "10", "--rate", "50", "--sweep", "--no-progress", "--out", str(tmp_path / "sweep")])
    assert result.exit_code == 0, result.output
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert sweep["stopped"] and 1 <= len(sweep["steps"]) <= 8
    assert [s["rate"] for s in sweep["steps"]] == [50 * 2 ** i for i in range(len(sweep["steps"]))]
    for step in sweep["steps"]:
        assert len(read_run(tmp_path / "sweep" / f"rate_{step['rate']:g}").records) == 10


@pytest.mark.parametrize(("args", "message"), [
    (["--rate", "1", "--rate-scale", "2", "--trace", "azure-conv"], "not both"),
    (["--prompt", "4"], "--output"),
    (["--header", "nocolon", "--prompt", "4", "--output", "4", "--rate", "1"], "Name: value"),
    (["--endpoint", "grpc"], "completions or chat"),
])
def test_cli_bad_flags_are_one_line_errors(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--url", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "x"),
                                      *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_non_streamed_json_reply_is_one_event(fake_server: FakeServer) -> None:
    config = ClientConfig(fake_server.url, "fake", "chat", timeout_s=5)
    result = asyncio.run(_one(config, "FAULT=json", 6))
    assert result.error is None and result.chunk_tokens == [6] and result.finish_reason == "length"
    record = to_record("r", result, t0_s=result.start_s, prompt_tokens=1, max_tokens=6)
    assert record.ok and record.output_tokens == 6 and record.first_token_s == record.last_token_s


def _handle_all(payloads: list[bytes], chat: bool = False) -> StreamResult:
    result = StreamResult(start_s=0.0)
    state = _StreamState(result, chat)
    for i, payload in enumerate(payloads):
        state.handle(payload, float(i + 1))
    return result


def test_event_handling_edge_cases() -> None:
    # Two events without the blank line between them are still read.
    joined = _handle_all([b'{"choices":[{"text":"a"}]}\n{"choices":[{"text":"b","finish_reason":"stop"}]}'])
    assert joined.error is None and joined.chunk_tokens == [1, 1] and joined.finish_reason == "stop"
    # Reasoning tokens of chat models count as output; the role-only first delta does not.
    chat = _handle_all([b'{"choices":[{"delta":{"role":"assistant","content":""}}]}',
                        b'{"choices":[{"delta":{"reasoning_content":"hmm"}}]}',
                        b'{"choices":[{"delta":{"content":"ok"}}]}'], chat=True)
    assert chat.chunk_times_s == [2.0, 3.0]
    # An error object inside the stream, and events that are not objects.
    assert _handle_all([b'{"error":{"message":"out of memory"}}']).error == "server_error: out of memory"
    assert (_handle_all([b"[1, 2]"]).error or "").startswith("bad_sse: event is not a JSON object")
    assert (_handle_all([b"{broken\n{also"]).error or "").startswith("bad_sse: event is not JSON")


def test_live_progress_renders_counts(fake_server: FakeServer, tmp_path: Path) -> None:
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=120)
    spec = BenchSpec(url=fake_server.url, model="fake", prompt="4", output="30", requests=6, concurrency=2)
    summary = run_bench(spec, tmp_path / "run", console=console)
    assert summary.completed == 6
    stats = LiveStats(total=3)
    stats.sent = 3
    stats.on_record(RequestRecord("a", 0.0, 3, 4, first_token_s=0.2, last_token_s=0.5))
    stats.on_record(RequestRecord("b", 0.0, 3, 0, error="connect: refused"))
    assert (stats.done, stats.failed) == (1, 1) and stats.output_tokens_per_s() > 0
    text = _render(stats)
    assert "3/3" in text and "200 ms" in text and "100.0 ms" in text
    assert "paretoserve bench" in output.getvalue()  # the live table was drawn during the run


def _render(stats: LiveStats) -> str:
    console = Console(file=io.StringIO(), width=120)
    console.print(stats.render())
    return console.file.getvalue()  # type: ignore[attr-defined]
