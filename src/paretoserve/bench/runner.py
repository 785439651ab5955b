"""`bench` as a library call: workload -> prompts -> load -> run folder and summary.

`run_bench(spec, out)` measures one run; `run_sweep(spec, out)` a series of rates until the
server saturates (criterion in `paretoserve.bench.loadgen`). Both write the shared run-folder
schema (`config.yaml`, `requests.jsonl`, `summary.json`) with one record per request, flushed as
each request completes, so an interrupted run (Ctrl-C) leaves a valid partial run folder.

Lengths: `max_prompt_tokens` / `max_output_tokens` clip every request's prompt / output length (for
small servers: a trace's prompts may exceed the model's context); the records hold what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.live import Live

from paretoserve.atomic import write_text_atomic
from paretoserve.bench.client import ClientConfig, Endpoint, make_session
from paretoserve.bench.eventloop import loop_name
from paretoserve.bench.eventloop import run as run_loop
from paretoserve.bench.loadgen import (
    Job,
    LiveStats,
    LoadShape,
    StepResult,
    SweepCriterion,
    run_load,
    step_result,
)
from paretoserve.bench.prompts import Tokenizer, build_prompts, probe_tokenizer
from paretoserve.bench.workers import run_load_workers
from paretoserve.errors import UserError
from paretoserve.metrics.records import RequestRecord
from paretoserve.metrics.slo import parse_slo
from paretoserve.metrics.summary import Summary, SummaryBuilder
from paretoserve.outputs import claim_folder, open_folder
from paretoserve.runs import RunWriter
from paretoserve.workload.request import Request
from paretoserve.workload.synthetic import build_workload

#: Seconds between progress refreshes.
PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class BenchSpec:
    """Everything one `bench` run needs (the CLI flags of `paretoserve bench`).

    Attributes:
        url: the server's OpenAI base URL, e.g. `http://127.0.0.1:8000/v1`.
        model: model name; None asks the server (`GET <url>/models`, first model).
        endpoint: `completions` or `chat`.
        trace: bundled trace name or trace file (arrivals and/or lengths), or None.
        arrival: `trace`, `poisson`, `gamma:CV` or `constant`; None picks `trace` with a trace, else
            `poisson`.
        rate: requests/s (rescales a trace, or the synthetic rate).
        rate_scale: factor on a trace's own rate.
        concurrency: with a rate (or a trace's timestamps): at most this many in flight; alone: a
            closed loop keeping this many in flight.
        requests: number of requests (None: all of the trace / up to `duration_s`).
        duration_s: stop sending after this many seconds.
        prompt, output: length specs overriding the trace's lengths (`paretoserve.workload.synthetic`).
        max_prompt_tokens, max_output_tokens: clip lengths to at most these.
        seed: seed of arrivals, lengths and prompt words.
        timeout_s: per-request time limit, seconds.
        api_key: bearer token (never written to the run folder).
        headers: extra HTTP headers (only their names are written to the run folder).
        ignore_eos: ask for exactly the output length (`ignore_eos`, `min_tokens`).
        extra_body: extra JSON fields for every request body.
        tokenize: use the server's tokenizer for exact prompt lengths when it has one.
        slo: SLO string for goodput (see `paretoserve.metrics.slo`).
        workers: load-generator processes sharing the schedule (`paretoserve.bench.workers`), for
            rates one core cannot drive; 1 sends from this process.
    """

    url: str
    model: str | None = None
    endpoint: Endpoint = "completions"
    trace: str | None = None
    arrival: str | None = None
    rate: float | None = None
    rate_scale: float | None = None
    concurrency: int | None = None
    requests: int | None = None
    duration_s: float | None = None
    prompt: str | None = None
    output: str | None = None
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    seed: int = 0
    timeout_s: float = 600.0
    api_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    ignore_eos: bool = True
    extra_body: Mapping[str, object] = field(default_factory=dict)
    tokenize: bool = True
    slo: str | None = None
    workers: int = 1

    @property
    def closed_loop(self) -> bool:
        """A fixed-concurrency run (a concurrency and no rate, rate scale or arrival process)."""
        return (self.concurrency is not None and self.rate is None and self.rate_scale is None
                and self.arrival is None)

    def shape(self) -> LoadShape:
        """The load shape this spec asks for."""
        if self.closed_loop:
            return LoadShape(self.concurrency, open_loop=False, duration_s=self.duration_s)
        return LoadShape(self.concurrency, open_loop=True, duration_s=self.duration_s)

    def client_config(self, model: str) -> ClientConfig:
        """The client settings for `model`."""
        return ClientConfig(self.url, model, self.endpoint, self.api_key, dict(self.headers), self.timeout_s,
                            self.ignore_eos, True, dict(self.extra_body))

    def validate(self) -> None:
        """Raise `UserError` for a combination of settings that cannot work."""
        if not self.url.startswith(("http://", "https://")):
            raise UserError(f"--url {self.url!r}: expected http://HOST:PORT/v1")
        if self.rate is not None and self.rate_scale is not None:
            raise UserError("give --rate or --rate-scale, not both")
        if self.concurrency is not None and self.concurrency < 1:
            raise UserError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.timeout_s <= 0:
            raise UserError(f"--timeout must be > 0 s, got {self.timeout_s:g}")
        for name, value in (("--max-prompt-tokens", self.max_prompt_tokens),
                            ("--max-output-tokens", self.max_output_tokens)):
            if value is not None and value < 1:
                raise UserError(f"{name} must be >= 1, got {value}")
        if self.trace is None and (self.prompt is None or self.output is None):
            raise UserError("without --trace, give the lengths with --prompt and --output (e.g. 256)")
        if self.closed_loop and self.requests is None and self.trace is None:
            raise UserError("a fixed-concurrency run without a trace needs --requests")
        if self.slo is not None:
            parse_slo(self.slo)
        if self.workers < 1:
            raise UserError(f"--workers must be >= 1, got {self.workers}")
        if self.concurrency is not None and self.concurrency < self.workers:
            raise UserError(f"--workers {self.workers} needs --concurrency of at least {self.workers} "
                            f"(one request in flight per worker), got {self.concurrency}")

    def config(self) -> dict[str, Any]:
        """The run's config.yaml content (secrets left out)."""
        data = dataclasses.asdict(self)
        data["api_key"] = "<set>" if self.api_key else None
        data["headers"] = sorted(self.headers)
        data["extra_body"] = dict(self.extra_body)
        data["load"] = self.shape().describe()
        data["event_loop"] = loop_name()
        return data


def workload(spec: BenchSpec, rate: float | None = None) -> list[Request]:
    """The requests to send (at `rate` instead of `spec.rate` when given), lengths clipped."""
    rate = spec.rate if rate is None else rate
    if spec.closed_loop:
        arrival = "trace" if spec.trace is not None else "constant"
        requests = build_workload(spec.trace, arrival=arrival, rate=None if spec.trace else 1.0,
                                  requests=spec.requests, prompt=spec.prompt, output=spec.output,
                                  seed=spec.seed)
    else:
        arrival = spec.arrival or ("trace" if spec.trace is not None else "poisson")
        requests = build_workload(spec.trace, arrival=arrival, rate=rate, rate_scale=spec.rate_scale,
                                  requests=spec.requests, duration_s=spec.duration_s, prompt=spec.prompt,
                                  output=spec.output, seed=spec.seed)
    if spec.max_prompt_tokens is None and spec.max_output_tokens is None:
        return requests
    max_in = spec.max_prompt_tokens or 1 << 62
    max_out = spec.max_output_tokens or 1 << 62
    return [dataclasses.replace(r, prompt_tokens=min(r.prompt_tokens, max_in),
                                output_tokens=min(r.output_tokens, max_out)) for r in requests]


async def server_model(session: aiohttp.ClientSession, url: str) -> str:
    """The first model the server lists at `GET <url>/models`."""
    try:
        timeout = aiohttp.ClientTimeout(total=30)
        async with session.get(url.rstrip("/") + "/models", timeout=timeout) as response:
            response.raise_for_status()
            data = await response.json(content_type=None)
        return str(data["data"][0]["id"])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise UserError(f"cannot list the models at {url.rstrip('/')}/models ({type(exc).__name__}: "
                        f"{exc}); is the server up? give --model to skip this") from None


async def _prepare(spec: BenchSpec, requests: list[Request],
                   tokenizer: Tokenizer | None = None) -> tuple[str, Tokenizer | None, list[Job]]:
    """Resolve the model, find the tokenizer (unless given), and build the jobs."""
    base = spec.client_config(spec.model or "")
    async with make_session(base, 16) as session:
        model = spec.model or await server_model(session, spec.url)
        if tokenizer is None and spec.tokenize:
            tokenizer = await probe_tokenizer(session, spec.url, model)
        prompts = await build_prompts(requests, seed=spec.seed, session=session, tokenizer=tokenizer)
    jobs = [Job(r, p, r.output_tokens) for r, p in zip(requests, prompts, strict=True)]
    return model, tokenizer, jobs


async def _measure(spec: BenchSpec, model: str, jobs: list[Job], writer: RunWriter, builder: SummaryBuilder,
                   console: Console | None) -> list[RequestRecord]:
    """Run the load, writing each record as it completes, with live progress on `console`."""
    records: list[RequestRecord] = []

    def on_record(record: RequestRecord) -> None:
        writer.add(record)
        builder.add(record)
        records.append(record)

    stats = LiveStats(len(jobs))
    if spec.workers > 1:
        run = run_load_workers(jobs, spec.client_config(model), spec.shape(), on_record, workers=spec.workers,
                               stats=stats)
    else:
        run = run_load(jobs, spec.client_config(model), spec.shape(), on_record, stats=stats)
    if console is None:
        await run
        return records
    with Live(stats.render(), console=console, transient=True, auto_refresh=False) as live:
        task = asyncio.ensure_future(run)
        while not task.done():
            await asyncio.wait({task}, timeout=PROGRESS_INTERVAL_S)
            live.update(stats.render(), refresh=True)
        await task
    return records


def _config(spec: BenchSpec, model: str, tokenizer: Tokenizer | None, jobs: list[Job],
            **more: object) -> dict[str, Any]:
    """config.yaml content for one run."""
    config = {"command": "bench", **spec.config(), "model": model,
              "tokenizer": None if tokenizer is None else {"url": tokenizer.url, "style": tokenizer.style},
              "prompt_tokens_exact": bool(jobs) and all(j.prompt.exact for j in jobs),
              "requests_planned": len(jobs),
              "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    config.update(more)
    return config


async def _bench(spec: BenchSpec, out: Path, console: Console | None, rate: float | None = None,
                 tokenizer: Tokenizer | None = None,
                 **more: object) -> tuple[Summary, list[RequestRecord], Tokenizer | None]:
    """One run into `out`."""
    requests = workload(spec, rate)
    model, tokenizer, jobs = await _prepare(spec, requests, tokenizer)
    slo = None if spec.slo is None else parse_slo(spec.slo)
    builder = SummaryBuilder(slo)
    with RunWriter(out, _config(spec, model, tokenizer, jobs, **more), keep_partial=True, flush_every=1,
                   slo=slo, inputs=(spec.trace,)) as writer:
        records = await _measure(spec, model, jobs, writer, builder, console)
        summary = builder.finish()
        writer.finish(summary)
    return summary, records, tokenizer


def run_bench(spec: BenchSpec, out: str | Path, *, console: Console | None = None) -> Summary:
    """Measure one run of `spec` into the run folder `out`; live progress on `console` when given.

    Raises:
        UserError: bad settings, or a server that cannot be reached when the model must be asked.
        KeyboardInterrupt: on Ctrl-C, after `out` was written as a partial run.
    """
    spec.validate()
    claim_folder(out, "bench", inputs=(spec.trace,))  # before any request is sent
    summary, _, _ = run_loop(_bench(spec, Path(out), console))
    return summary


def run_sweep(spec: BenchSpec, out: str | Path, *, criterion: SweepCriterion | None = None,
              console: Console | None = None) -> tuple[list[StepResult], str]:
    """Measure rates `criterion.rates(spec.rate or 1)` into `out/rate_<R>/` until the server
    saturates; writes `out/sweep.json` and returns the steps and why the sweep stopped."""
    spec.validate()
    if spec.closed_loop:
        raise UserError("--sweep varies the request rate; it cannot be combined with a fixed --concurrency "
                        "alone (give --rate as the first rate)")
    if spec.rate_scale is not None:
        raise UserError("--sweep sets the rate itself; leave out --rate-scale")
    criterion = criterion or SweepCriterion()
    folder = open_folder(out, "bench --sweep", inputs=(spec.trace,))
    steps: list[StepResult] = []
    reason = ""

    async def sweep() -> None:
        nonlocal reason
        tokenizer = None
        for rate in criterion.rates(spec.rate or 1.0):
            _, records, tokenizer = await _bench(spec, folder / f"rate_{rate:g}", console, rate, tokenizer,
                                                 sweep_rate=rate)
            steps.append(step_result(rate, records))
            if console is not None:
                step = steps[-1]
                ttft = "-" if step.ttft_p50_s is None else f"{step.ttft_p50_s * 1e3:.0f} ms"
                console.print(f"rate {rate:g} req/s: achieved {step.achieved_rps:.3g} req/s, "
                              f"{step.output_tokens_per_s:.0f} output tok/s, TTFT p50 {ttft}, "
                              f"{step.error_fraction:.0%} failed")
            found = criterion.stop_reason(steps)
            if found is not None:
                reason = found
                return

    with contextlib.suppress(KeyboardInterrupt):
        run_loop(sweep())
    reason = reason or "interrupted"
    write_text_atomic(folder / "sweep.json", json.dumps(
        {"criterion": dataclasses.asdict(criterion), "stopped": reason,
         "steps": [dataclasses.asdict(s) for s in steps]}, indent=2) + "\n")
    if reason == "interrupted":
        raise KeyboardInterrupt
    return steps, reason
