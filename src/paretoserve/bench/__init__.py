"""Measure real OpenAI-compatible servers with the same workloads and metrics as the simulator.

`run_bench` / `run_sweep` (runner) drive a run end to end; `client` streams one request and records
its token timestamps; `loadgen` schedules requests (open loop, capped, fixed concurrency, sweep);
`prompts` builds prompts of exact token lengths; `importers` reads vLLM's own measurements;
`fakeserver` is a fast fault-injecting stand-in server for tests and overhead benchmarks.
"""

from paretoserve.bench.runner import BenchSpec, run_bench, run_sweep

__all__ = ["BenchSpec", "run_bench", "run_sweep"]
