"""Load generation: send a workload to a server on schedule and record every request as it completes.

Load shapes (`LoadShape`):

- open loop (`concurrency=None`): each request is sent at its `arrival_s` after the run start. The
  arrival times come from the workload (`paretoserve.workload.synthetic.build_workload`): a trace's
  own timestamps (optionally rescaled with `rate` / `rate_scale`), or Poisson, gamma (burstiness =
  the gaps' coefficient of variation) or constant arrivals at a rate.
- open loop with a cap (`concurrency=C` and `open_loop=True`): as above, but at most C requests are
  in flight; a request due while C are in flight waits for one to finish (like vLLM's
  `--max-concurrency`), and that wait shows as `extra.lag_s`.
- fixed concurrency (`concurrency=C`, `open_loop=False`): C requests are always in flight; each
  finished request is replaced at once by the next one; arrival times are ignored.

Each record's `arrival_s` is when the request was actually sent (seconds from the run start), and
`extra.lag_s` is how late that was against its scheduled arrival (open loop), so a client that
cannot keep up is visible. With a cap, `extra.slot_wait_s` is the part of that lag spent waiting
for a free slot (the server's doing, not the client's); the rest is the client's own send lag.

Timing: each send wakes `SPIN_S` before its due time on the loop's timer (whose resolution is
about a millisecond) and then yields to the loop until the due time, so sends are not late by the
timer's rounding while responses keep being read. Before the first send the garbage collector
collects once and freezes what exists (the prepared jobs), so collections during the run only
scan what the run itself creates. Records go to `on_record` as soon as each request completes or fails;
when the run is cancelled (Ctrl-C), requests in flight are recorded as `interrupted` first.

Sweep (`SweepCriterion`): rates rise geometrically from a start rate; after each step the sweep
stops when the server is saturated, i.e. the first of

1. the achieved request throughput grew by less than `min_growth` (default 10 %) over the previous
   step although the offered rate rose by `factor` (default 2x);
2. the median TTFT exceeds `latency_factor` (default 10) times the first step's median TTFT, and
   at least `floor_s` (0.5 s) more than it ("latency explodes");
3. more than `max_error_fraction` (default 10 %) of the step's requests failed;
4. `max_steps` (default 8) steps were run.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from rich.table import Table

from paretoserve.bench.client import ClientConfig, StreamResult, make_session, stream_request, to_record
from paretoserve.bench.prompts import Prompt
from paretoserve.metrics.records import RequestRecord
from paretoserve.workload.request import Request

#: How long before a send's due time the open loop stops sleeping and starts yielding (s).
SPIN_S = 0.002


@dataclass(frozen=True, slots=True)
class Job:
    """One request to send: the workload request, its prompt, and the output length to ask for."""

    request: Request
    prompt: Prompt
    max_tokens: int


@dataclass(frozen=True, slots=True)
class LoadShape:
    """How requests are released.

    Attributes:
        concurrency: the most requests in flight (None: no limit).
        open_loop: send at the requests' arrival times (True) or keep `concurrency` in flight (False).
        duration_s: stop sending new requests after this many seconds (None: send them all).
    """

    concurrency: int | None = None
    open_loop: bool = True
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if not self.open_loop and self.concurrency is None:
            raise ValueError("a closed loop needs a concurrency")

    def describe(self) -> str:
        """Short description for tables and configs."""
        if not self.open_loop:
            return f"concurrency {self.concurrency}"
        return "arrivals" + ("" if self.concurrency is None else f", at most {self.concurrency} in flight")


class LiveStats:
    """Running counts and recent latencies for the progress display.

    TTFT/TPOT medians cover the last `window` completed requests; output tokens/s covers the last
    `rate_window_s` seconds.
    """

    def __init__(self, total: int, window: int = 1000, rate_window_s: float = 10.0) -> None:
        self.total = total
        self.sent = 0
        self.done = 0
        self.failed = 0
        self.start_s = time.monotonic()
        self._ttft: deque[float] = deque(maxlen=window)
        self._tpot: deque[float] = deque(maxlen=window)
        self._tokens: deque[tuple[float, int]] = deque()
        self._rate_window_s = rate_window_s

    def on_record(self, record: RequestRecord) -> None:
        """Count a finished request."""
        if record.ok:
            self.done += 1
            self._ttft.append(record.ttft_s or 0.0)
            if record.tpot_s is not None:
                self._tpot.append(record.tpot_s)
        else:
            self.failed += 1
        if record.output_tokens:
            self._tokens.append((time.monotonic(), record.output_tokens))

    def output_tokens_per_s(self) -> float:
        """Output tokens per second of requests finished in the last `rate_window_s` seconds."""
        now = time.monotonic()
        while self._tokens and self._tokens[0][0] < now - self._rate_window_s:
            self._tokens.popleft()
        span = min(self._rate_window_s, now - self.start_s)
        return sum(n for _, n in self._tokens) / span if span > 0 else 0.0

    def render(self) -> Table:
        """The progress table."""
        table = Table(title="paretoserve bench", show_header=True)
        for name in ("sent", "done", "failed", "in flight", "TTFT p50", "TPOT p50", "output tok/s"):
            table.add_column(name, justify="right")
        ttft = f"{statistics.median(self._ttft) * 1e3:.0f} ms" if self._ttft else "-"
        tpot = f"{statistics.median(self._tpot) * 1e3:.1f} ms" if self._tpot else "-"
        in_flight = self.sent - self.done - self.failed
        table.add_row(f"{self.sent}/{self.total}", str(self.done), str(self.failed), str(in_flight), ttft,
                      tpot, f"{self.output_tokens_per_s():.0f}")
        return table


async def run_load(jobs: Sequence[Job], config: ClientConfig, shape: LoadShape,
                   on_record: Callable[[RequestRecord], None], *, stats: LiveStats | None = None,
                   t0_s: float | None = None) -> float:
    """Send `jobs` (sorted by arrival for the open loop) with `shape`; returns the run start on the
    monotonic clock (seconds), the zero of every record's times and arrivals: `t0_s` when given
    (e.g. shared by several worker processes; the first send waits for it), else now.

    Every request sent produces exactly one `on_record` call, also when cancelled.
    """
    limit = asyncio.Semaphore(shape.concurrency) if shape.concurrency else None
    pending: set[asyncio.Task[None]] = set()
    gc.collect()
    gc.freeze()
    try:
        async with make_session(config, shape.concurrency) as session:
            t0 = time.monotonic() if t0_s is None else t0_s
            await _until(t0)
            deadline = None if shape.duration_s is None else t0 + shape.duration_s

            async def one(job: Job, due_s: float | None, slot_wait_s: float | None) -> None:
                result = StreamResult(start_s=time.monotonic())
                try:
                    await stream_request(session, config, job.prompt.text, job.max_tokens, result)
                finally:
                    extra: dict[str, object] | None = None
                    if due_s is not None:
                        extra = {"lag_s": round(result.start_s - due_s, 7)}
                        if slot_wait_s is not None:
                            extra["slot_wait_s"] = round(slot_wait_s, 7)
                    record = to_record(job.request.request_id, result, t0_s=t0,
                                       prompt_tokens=job.prompt.tokens, max_tokens=job.max_tokens, extra=extra)
                    on_record(record)
                    if stats is not None:
                        stats.on_record(record)
                    if limit is not None:
                        limit.release()

            def launch(job: Job, due_s: float | None, slot_wait_s: float | None = None) -> None:
                task = asyncio.create_task(one(job, due_s, slot_wait_s))
                pending.add(task)
                task.add_done_callback(pending.discard)
                if stats is not None:
                    stats.sent += 1

            try:
                if shape.open_loop:
                    await _open_loop(jobs, t0, deadline, limit, launch)
                else:
                    await _closed_loop(jobs, deadline, limit, launch)
                while pending:
                    await asyncio.gather(*pending)
            except asyncio.CancelledError:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                raise
    finally:
        gc.unfreeze()
    return t0


async def _until(when_s: float) -> None:
    """Return at `when_s` on the monotonic clock: sleep on the loop's timer until `SPIN_S` before,
    then yield to the loop (reading responses meanwhile) until the time has come."""
    delay = when_s - time.monotonic()
    if delay > SPIN_S:
        await asyncio.sleep(delay - SPIN_S)
    while time.monotonic() < when_s:
        await asyncio.sleep(0)


async def _open_loop(jobs: Iterable[Job], t0: float, deadline: float | None, limit: asyncio.Semaphore | None,
                     launch: Callable[[Job, float | None, float | None], None]) -> None:
    """Release each job at its arrival time (waiting for a free slot when capped)."""
    for job in jobs:
        due = t0 + job.request.arrival_s
        if deadline is not None and due >= deadline:
            return
        await _until(due)
        if limit is None:
            launch(job, due, None)
            continue
        ready = time.monotonic()
        await limit.acquire()
        launch(job, due, time.monotonic() - ready)


async def _closed_loop(jobs: Iterable[Job], deadline: float | None, limit: asyncio.Semaphore | None,
                       launch: Callable[[Job, float | None, float | None], None]) -> None:
    """Keep the concurrency limit busy: release the next job whenever a slot frees."""
    assert limit is not None
    for job in jobs:
        await limit.acquire()
        if deadline is not None and time.monotonic() >= deadline:
            limit.release()
            return
        launch(job, None, None)


# ---------------------------------------------------------------------------------------------
# Sweep


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one sweep step achieved.

    Attributes:
        rate: offered request rate, requests/s.
        achieved_rps: completed requests / (last completion - first send), requests/s.
        output_tokens_per_s: output tokens of completed requests over the same span.
        ttft_p50_s: median TTFT of completed requests, seconds (None when none completed).
        error_fraction: failed requests / requests sent.
    """

    rate: float
    achieved_rps: float
    output_tokens_per_s: float
    ttft_p50_s: float | None
    error_fraction: float


def step_result(rate: float, records: Sequence[RequestRecord]) -> StepResult:
    """Summarise one sweep step's records."""
    ok = [r for r in records if r.ok]
    if not ok:
        return StepResult(rate, 0.0, 0.0, None, 1.0 if records else 0.0)
    start = min(r.arrival_s for r in records)
    end = max(r.last_token_s for r in ok if r.last_token_s is not None)
    span = max(end - start, 1e-9)
    ttft = statistics.median(r.ttft_s for r in ok if r.ttft_s is not None)
    return StepResult(rate, len(ok) / span, sum(r.output_tokens for r in ok) / span, ttft,
                      1.0 - len(ok) / len(records))


@dataclass(frozen=True, slots=True)
class SweepCriterion:
    """When a rate sweep stops (module docstring): thresholds of the saturation test."""

    factor: float = 2.0
    min_growth: float = 0.10
    latency_factor: float = 10.0
    floor_s: float = 0.5
    max_error_fraction: float = 0.10
    max_steps: int = 8

    def rates(self, start: float) -> list[float]:
        """The offered rates, requests/s: start, start * factor, ... (`max_steps` of them)."""
        return [start * self.factor ** i for i in range(self.max_steps)]

    def stop_reason(self, steps: Sequence[StepResult]) -> str | None:
        """Why the sweep must stop after `steps`, or None to go on."""
        last = steps[-1]
        if last.error_fraction > self.max_error_fraction:
            return f"{last.error_fraction:.0%} of requests failed at {last.rate:g} req/s"
        first = steps[0]
        if (last.ttft_p50_s is not None and first.ttft_p50_s is not None
                and last.ttft_p50_s > self.latency_factor * first.ttft_p50_s
                and last.ttft_p50_s > first.ttft_p50_s + self.floor_s):
            return (f"median TTFT {last.ttft_p50_s:.3g} s at {last.rate:g} req/s is over "
                    f"{self.latency_factor:g}x the first step's {first.ttft_p50_s:.3g} s")
        if len(steps) >= 2:
            previous = steps[-2]
            if last.achieved_rps < previous.achieved_rps * (1 + self.min_growth):
                return (f"throughput stopped growing: {last.achieved_rps:.3g} req/s at {last.rate:g} req/s "
                        f"offered vs {previous.achieved_rps:.3g} at {previous.rate:g}")
        if len(steps) >= self.max_steps:
            return f"{self.max_steps} steps run"
        return None
