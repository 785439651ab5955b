"""Faults: each kind is recorded on its request with a stable error kind, and the run goes on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

import paretoserve.cli.commands  # noqa: F401  (registers the commands)
from paretoserve.bench.client import ClientConfig, error_kind
from paretoserve.bench.fakeserver import FakeServer, FakeServerConfig
from paretoserve.bench.llama_server import free_port
from paretoserve.bench.loadgen import Job, LoadShape, run_load
from paretoserve.bench.prompts import Prompt
from paretoserve.cli.app import app
from paretoserve.metrics.records import RequestRecord
from paretoserve.runs import read_run
from paretoserve.workload.request import Request
from servers import _fake_server_fixture  # noqa: F401


def job(request_id: str, text: str, max_tokens: int = 5) -> Job:
    return Job(Request(request_id, 0.0, 3, max_tokens), Prompt(text, 3, False), max_tokens)


def run(url: str, jobs: list[Job], timeout_s: float = 5.0) -> dict[str, RequestRecord]:
    records: list[RequestRecord] = []
    config = ClientConfig(url, "fake", timeout_s=timeout_s)
    asyncio.run(run_load(jobs, config, LoadShape(), records.append))
    return {r.request_id: r for r in records}


def test_each_fault_kind_is_recorded_and_other_requests_complete(fake_server: FakeServer) -> None:
    faults = {"http_500": "http_500", "http_429": "http_429", "cut": "stream_cut", "bad_sse": "bad_sse",
              "stall": "timeout"}
    jobs = [job(f"ok{i}", "a b c") for i in range(5)]
    jobs += [job(name, f"FAULT={name}") for name in faults]
    records = run(fake_server.url, jobs, timeout_s=1.0)
    assert len(records) == len(jobs)
    for i in range(5):
        record = records[f"ok{i}"]
        assert record.ok and record.output_tokens == 5 and record.error is None
    for name, kind in faults.items():
        record = records[name]
        assert not record.ok
        assert record.error is not None and error_kind(record.error) == kind, record.error
        assert "\n" not in record.error
    assert "injected http_500" in (records["http_500"].error or "")
    # Tokens that arrived before a fault are kept on the record.
    assert records["cut"].output_tokens == 2 and records["cut"].first_token_s is not None
    assert records["stall"].output_tokens == 1


def test_refused_connection_is_recorded_per_request() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    records = run(url, [job(f"r{i}", "a b c") for i in range(3)])
    assert len(records) == 3
    assert all(r.error is not None and error_kind(r.error) == "connect" for r in records.values())
    assert all(r.output_tokens == 0 and r.first_token_s is None for r in records.values())


def test_timeout_is_enforced_per_request(fake_server: FakeServer) -> None:
    start = time.monotonic()
    records = run(fake_server.url, [job("stall", "FAULT=stall"), job("ok", "a b c")], timeout_s=0.3)
    assert time.monotonic() - start < 3.0
    assert error_kind(records["stall"].error or "") == "timeout"
    assert records["ok"].ok


def _partial_folder(out: Path) -> Path | None:
    """The RunWriter's temporary folder for `out` while the run is in progress."""
    found = sorted(out.parent.glob(f".{out.name}.*.partial"))
    return found[0] if found else None


def test_ctrl_c_leaves_a_readable_partial_run(tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    with FakeServer(FakeServerConfig(token_interval_s=0.05)) as server:
        command = [sys.executable, "-c", "from paretoserve.cli import main; main()",
                   "bench", "--url", server.url, "--model", "fake",
                   "--prompt", "8", "--output", "20", "--requests", "40", "--concurrency", "2",
                   "--timeout", "30", "--no-progress", "--out", str(out)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                folder = _partial_folder(out)
                if folder is not None and (folder / "requests.jsonl").is_file() and \
                        len((folder / "requests.jsonl").read_text().splitlines()) >= 3:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the run wrote no records within 30 s")
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, stderr.decode()
    assert b"partial run written" in stderr
    run = read_run(out)
    assert run.summary is not None and run.summary["partial"] is True
    assert 3 <= len(run.records) < 40
    completed = [r for r in run.records if r.ok]
    interrupted = [r for r in run.records if r.error is not None]
    assert len(completed) >= 3 and all(r.output_tokens == 20 for r in completed)
    # Requests in flight at Ctrl-C are recorded as interrupted, not lost.
    assert interrupted and all(error_kind(r.error or "") == "interrupted" for r in interrupted)
    assert _partial_folder(out) is None


def _bench_cli(url: str, out: Path, *extra: str) -> Result:
    return CliRunner().invoke(app, ["bench", "--url", url, "--model", "fake", "--prompt", "8", "--output", "4",
                                    "--requests", "20", "--rate", "200", "--no-progress", "--out", str(out), *extra])


def test_bench_against_a_dead_port_exits_non_zero(tmp_path: Path) -> None:
    out = tmp_path / "dead"
    result = _bench_cli(f"http://127.0.0.1:{free_port()}/v1", out)
    assert result.exit_code == 1, result.output
    assert "20 of 20 requests failed (100%, more than --max-failed-share 10%)" in result.output
    assert "most often connect" in result.output
    records = read_run(out).records  # the failed run is still written
    assert len(records) == 20 and all(r.error is not None for r in records)


@pytest.mark.parametrize(("fail_every", "extra", "failed", "code"), [
    (4, (), 5, 1),                               # 25% failed > 10%
    (4, ("--max-failed-share", "0.25"), 5, 0),   # 25% is not more than 25%
    (20, (), 1, 0),                              # 5% failed <= 10%
])
def test_bench_exit_status_follows_the_failed_share(tmp_path: Path, fail_every: int, extra: tuple[str, ...],
                                                    failed: int, code: int) -> None:
    out = tmp_path / "run"
    with FakeServer(FakeServerConfig(fail_every=fail_every)) as server:
        result = _bench_cli(server.url, out, *extra)
    assert result.exit_code == code, result.output
    records = read_run(out).records
    assert len(records) == 20
    assert sum(r.error is not None for r in records) == failed
    assert all(error_kind(r.error) == "http_500" for r in records if r.error is not None)
    assert ("requests failed" in result.output) is (code == 1)
