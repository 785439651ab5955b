"""Measure real OpenAI-compatible servers with the same workloads and metrics as the simulator.

`run_bench` / `run_sweep` (runner) drive a run end to end; `client` streams one request and records
its token timestamps; `loadgen` schedules requests (open loop, capped, fixed concurrency, sweep);
`prompts` builds prompts of exact token lengths; `importers` reads vLLM's own measurements;
`fakeserver` is a fast fault-injecting stand-in server for tests and overhead benchmarks.
The runner's names are imported on first use, so `importers` loads no HTTP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from paretoserve.lazy import lazy_exports

if TYPE_CHECKING:
    from paretoserve.bench.runner import BenchSpec, run_bench, run_sweep

__all__ = ["BenchSpec", "run_bench", "run_sweep"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, "paretoserve.bench.runner"))
