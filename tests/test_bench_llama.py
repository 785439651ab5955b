"""The load generator against a real engine: llama.cpp (llama-cpp-python) serving SmolLM2-135M.

llama-cpp-python's OpenAI endpoints return no timing fields and, when streaming, no `usage`; the
server logs llama.cpp's own per-request timings instead (`llama_perf_context_print`: prompt eval
time over P tokens, eval time over R decode runs, total time). These tests compare what the client
records with those timings and with the `usage` of the same request sent without streaming.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import urllib.request
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from paretoserve.bench.client import ClientConfig, make_session
from paretoserve.bench.llama_server import llama_available
from paretoserve.bench.loadgen import Job, LoadShape, run_load
from paretoserve.bench.prompts import Prompt, build_prompts, probe_tokenizer
from paretoserve.cli import commands  # noqa: F401  (registers the commands on `app`)
from paretoserve.cli.app import app
from paretoserve.metrics.records import RequestRecord
from paretoserve.runs import read_run
from paretoserve.workload.request import Request
from prereq import missing
from servers import LLAMA_MODEL, LlamaServer, _llama_server_fixture  # noqa: F401

pytestmark = pytest.mark.server

REQUEST_TIMEOUT_S = 60.0
OUTPUT_TOKENS = 16
GREEDY = {"temperature": 0.0, "seed": 0}


@dataclass(frozen=True)
class ServerTiming:
    """llama.cpp's own timings of one request (from the server log), seconds and counts."""

    prefix_hit_tokens: int
    prompt_eval_s: float
    prompt_eval_tokens: int
    eval_s: float
    eval_runs: int
    total_s: float


_NUMBER = r"([\d.]+)"


def parse_timings(log: str) -> list[ServerTiming]:
    """One `ServerTiming` per `llama_perf_context_print` block, in log order."""
    timings = []
    prefix = 0
    prompt: tuple[float, int] | None = None
    decode: tuple[float, int] | None = None
    for line in log.splitlines():
        if match := re.search(r"(\d+) prefix-match hit", line):
            prefix = int(match.group(1))
        elif match := re.search(rf"prompt eval time =\s+{_NUMBER} ms /\s+(\d+) tokens", line):
            prompt = (float(match.group(1)) / 1e3, int(match.group(2)))
        elif match := re.search(rf"\beval time =\s+{_NUMBER} ms /\s+(\d+) runs", line):
            decode = (float(match.group(1)) / 1e3, int(match.group(2)))
        elif (match := re.search(rf"total time =\s+{_NUMBER} ms", line)) and prompt and decode:
            timings.append(ServerTiming(prefix, prompt[0], prompt[1], decode[0], decode[1],
                                        float(match.group(1)) / 1e3))
            prefix, prompt, decode = 0, None, None
    return timings


def client_config(server: LlamaServer, endpoint: str = "completions") -> ClientConfig:
    """Greedy decoding, so the streamed and non-streamed replies of one prompt are the same."""
    return ClientConfig(server.url, LLAMA_MODEL, endpoint, timeout_s=REQUEST_TIMEOUT_S,  # type: ignore[arg-type]
                        extra_body=GREEDY)


async def exact_jobs(server: LlamaServer, prompt_lengths: list[int], seed: int) -> list[Job]:
    """Jobs whose prompts have exactly the given lengths (via the server's tokenizer)."""
    requests = [Request(f"q{seed}-{i}", 0.0, n, OUTPUT_TOKENS) for i, n in enumerate(prompt_lengths)]
    config = client_config(server)
    async with make_session(config) as session:
        tokenizer = await probe_tokenizer(session, server.url, LLAMA_MODEL)
        assert tokenizer is not None and tokenizer.style == "llama-cpp-python"
        prompts = await build_prompts(requests, seed=seed, session=session, tokenizer=tokenizer)
    return [Job(r, p, OUTPUT_TOKENS) for r, p in zip(requests, prompts, strict=True)]


def run_sequentially(server: LlamaServer, jobs: list[Job]) -> list[RequestRecord]:
    """Send the jobs one at a time (so the server log's timing blocks are in request order)."""
    records: list[RequestRecord] = []
    asyncio.run(run_load(jobs, client_config(server), LoadShape(1, open_loop=False), records.append))
    return records


def non_streamed_usage(server: LlamaServer, prompt: str) -> dict[str, int]:
    """`usage` of the same request sent without streaming."""
    body = {"model": LLAMA_MODEL, "prompt": prompt, "max_tokens": OUTPUT_TOKENS, **GREEDY}
    request = urllib.request.Request(server.url + "/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.load(response)["usage"]


def test_timings_agree_with_llama_cpp_own_timings(llama_server: LlamaServer) -> None:
    lengths = [24, 48, 96, 160, 64, 128]
    # Warm-up: llama.cpp builds its compute graph for a new batch shape outside its prompt-eval timer.
    run_sequentially(llama_server, asyncio.run(exact_jobs(llama_server, lengths, seed=10)))
    jobs = asyncio.run(exact_jobs(llama_server, lengths, seed=11))
    offset = llama_server.log_size()
    records = run_sequentially(llama_server, jobs)
    timings = parse_timings(llama_server.log_since(offset))
    assert len(records) == len(lengths) and len(timings) == len(lengths)
    ttft_gap, e2e_gap, tpot_ratio = [], [], []
    for record, timing, n in zip(records, timings, lengths, strict=True):
        assert record.ok, record.error
        # Exact prompt length: what the server evaluated (plus any prefix-cache hit) is what we sent.
        assert record.prompt_tokens == n
        assert timing.prompt_eval_tokens + timing.prefix_hit_tokens == n
        # The server ran one decode step per output token after the first.
        assert record.output_tokens == timing.eval_runs + 1
        assert record.itl_s is not None and len(record.itl_s) == record.output_tokens - 1
        assert record.tpot_s == pytest.approx(statistics.fmean(record.itl_s), rel=1e-5)
        assert record.ttft_s is not None and record.e2e_s is not None and record.tpot_s is not None
        # The client cannot see the first token before the server evaluated the prompt.
        assert record.ttft_s >= timing.prompt_eval_s
        ttft_gap.append(record.ttft_s - timing.prompt_eval_s)
        e2e_gap.append(record.e2e_s - timing.total_s)
        tpot_ratio.append(record.tpot_s / (timing.eval_s / timing.eval_runs))
    # HTTP, JSON and sampling add little: a few ms per request, ~10-15 % per token in llama-cpp-python.
    assert statistics.median(ttft_gap) < 0.1
    # llama.cpp's total time stops after the last token is handed to the HTTP layer, so the client's
    # E2E may end a little before it, never much.
    assert min(e2e_gap) > -0.05 and statistics.median(e2e_gap) >= 0.0 and max(e2e_gap) < 0.25
    assert 0.9 < statistics.median(tpot_ratio) < 1.35


def test_token_counts_match_usage(llama_server: LlamaServer) -> None:
    jobs = asyncio.run(exact_jobs(llama_server, [40, 80, 120], seed=12))
    records = run_sequentially(llama_server, jobs)
    for job, record in zip(jobs, records, strict=True):
        assert record.ok, record.error
        usage = non_streamed_usage(llama_server, job.prompt.text)
        assert record.prompt_tokens == usage["prompt_tokens"] == job.request.prompt_tokens
        assert record.output_tokens == usage["completion_tokens"]


def test_chat_endpoint_streams_tokens(llama_server: LlamaServer) -> None:
    job = Job(Request("chat", 0.0, 4, 8), Prompt("Name three colours.", 4, False), 8)
    records: list[RequestRecord] = []
    asyncio.run(run_load([job], client_config(llama_server, "chat"), LoadShape(1, open_loop=False),
                         records.append))
    (record,) = records
    assert record.ok, record.error
    assert 1 <= record.output_tokens <= 8
    assert record.prompt_tokens == 4  # no usage when streaming: the length sent is kept
    assert record.extra["finish_reason"] in ("length", "stop")


def test_cli_bench_end_to_end(llama_server: LlamaServer, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "real"
    result = CliRunner().invoke(app, [
        "bench", "--url", llama_server.url, "--trace", "azure-conv", "--requests", "6", "--rate", "20",
        "--max-prompt-tokens", "64", "--max-output-tokens", "8", "--timeout", str(REQUEST_TIMEOUT_S),
        "--no-progress", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "TTFT" in result.output
    run = read_run(out)
    assert len(run.records) == 6 and all(r.ok for r in run.records)
    assert run.config["prompt_tokens_exact"] is True
    assert run.config["tokenizer"]["style"] == "llama-cpp-python"
    assert all(r.prompt_tokens <= 64 and 1 <= r.output_tokens <= 8 for r in run.records)
    assert run.summary is not None and run.summary["completed"] == 6 and not run.summary["partial"]


def test_llama_cpp_is_the_portable_build() -> None:
    """make install-test builds llama.cpp with GGML_NATIVE=OFF: its CPU back end must not use AVX-512 or
    AMX, which some virtual machines advertise but do not execute (a native build then dies with an
    illegal instruction at the first completion). A native wheel reused from pip's cache fails here."""
    if not llama_available():
        missing("llama-cpp-python is not installed (make install-test)")
    import llama_cpp

    features = dict(re.findall(r"(\w+) = (\d)", llama_cpp.llama_print_system_info().decode()))
    assert features.get("AVX2") == "1", features
    assert not [name for name, on in features.items() if on == "1" and name.startswith(("AVX512", "AMX"))], features
