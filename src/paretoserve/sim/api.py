"""Library entry points of the simulator: `simulate` (records from requests) and `simulate_run`
(a whole run from a `SimulateConfig` into a run folder)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from paretoserve.errors import UserError
from paretoserve.metrics.slo import parse_slo
from paretoserve.metrics.summary import Summary, SummaryBuilder
from paretoserve.perf.base import StepTimeModel
from paretoserve.perf.memory import KvLayout
from paretoserve.perf.speculative import SpecDecoder
from paretoserve.runs import RunWriter
from paretoserve.sim.closed_loop import MeasuredWindow
from paretoserve.sim.config import DisaggConfig, EngineConfig
from paretoserve.sim.deployment import build_deployment
from paretoserve.sim.energy import ACTIVITY_NOTE, cost_usd, energy_joules
from paretoserve.sim.engine import Simulation
from paretoserve.sim.iteration import IterationRow
from paretoserve.sim.run_config import SimulateConfig
from paretoserve.workload.request import Request
from paretoserve.workload.synthetic import iter_workload

ITERATIONS_FILE = "iterations.csv"
_PROGRESS_EVERY = 512


def simulate(requests: Iterable[Request], *, step_model: StepTimeModel | None = None,
             kv_tokens: int | None = None, block_size: int = 16, policy: str = "vllm",
             max_num_seqs: int = 256, max_num_batched_tokens: int = 8192, prefix_caching: bool = True,
             reserve_full_prompt: bool = True, watermark: float = 0.0,
             policy_options: Mapping[str, object] | None = None, kv_bytes_per_token: float = 0.0,
             swap_bandwidth: float = 0.0, max_model_len: int | None = None, devices: int = 1,
             replicas: int = 1, router: str = "round_robin", disagg: DisaggConfig | None = None,
             fast: bool = True, on_itl: Callable[[float, int], None] | None = None,
             on_iteration: Callable[[IterationRow], None] | None = None,
             concurrency: int | None = None, warmup: int = 0,
             kv_layout: KvLayout | None = None, speculative: SpecDecoder | None = None) -> Simulation:
    """Simulate serving `requests` (sorted by arrival) and stream one `RequestRecord` per request.

    Every replica runs `step_model` with `kv_tokens` tokens of KV cache (see `EngineConfig` for the
    engine arguments); `replicas` of them sit behind `router`. With `disagg`, the deployment is the
    disaggregated prefill/decode pools it describes instead (and `step_model`/`kv_tokens` are not
    needed). Iterate the returned `Simulation` for the records (in completion order) and read its
    `stats` afterwards. `on_itl(gap_s, count)` receives every inter-token gap; `on_iteration`
    receives one row per engine step. `fast=False` takes every iteration one at a time (the
    reference for the fast path). `concurrency` caps the requests in flight: each is sent at
    max(its `arrival_s`, the previous send, a free slot) — with every arrival at 0, a closed loop of
    that many users, each sending its next request when its previous one completes; with `warmup`,
    the first `warmup` requests are a warm-up phase that drains before the rest are sent (see
    `paretoserve.sim.closed_loop`). `kv_layout` adds the blocks each sequence holds for
    sliding-window KV and recurrent state (`paretoserve.perf.memory.KvLayout`). `speculative`
    turns on speculative decoding (`paretoserve.perf.speculative.build_spec_decoder`; its target
    should be `step_model`).

    Example:
        >>> from paretoserve.perf.constant import LinearStepModel
        >>> sim = simulate([Request("a", 0.0, 100, 3)], step_model=LinearStepModel(0.01), kv_tokens=4096)
        >>> [round(r.e2e_s, 6) for r in sim]
        [0.03]
    """
    engine = None
    if disagg is None:
        if step_model is None or kv_tokens is None:
            raise TypeError("simulate() needs step_model and kv_tokens unless disagg is given")
        engine = EngineConfig(
            step_model=step_model, kv_tokens=kv_tokens, block_size=block_size, policy=policy,
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            prefix_caching=prefix_caching, reserve_full_prompt=reserve_full_prompt,
            watermark=watermark, policy_options=dict(policy_options or {}),
            kv_bytes_per_token=kv_bytes_per_token, swap_bandwidth=swap_bandwidth,
            max_model_len=max_model_len, devices=devices, kv_layout=kv_layout, speculative=speculative)
    return Simulation(requests, engine=engine, replicas=replicas, router=router, disagg=disagg,
                      fast=fast, on_itl=on_itl, on_iteration=on_iteration, concurrency=concurrency,
                      warmup=warmup)


def simulate_run(config: SimulateConfig, out_dir: str | Path, *,
                 progress: Callable[[float, int], None] | None = None) -> Summary:
    """Simulate `config` and write the run folder `out_dir` atomically; returns the summary.

    `out_dir` must be new, empty or an earlier `simulate` run, and no input of `config` (trace,
    profile, model or device file); anything else is a `UserError` (`paretoserve.outputs`).

    The folder holds config.yaml (the config and the derived deployment figures), requests.jsonl
    (one record per request, in completion order), summary.json and, with
    `config.iteration_trace`, iterations.csv. A closed-loop run (`config.closed_loop`) sends its
    `config.warmup` warm-up requests and then `requests` measured ones from `concurrency` users, and
    summarises the measured ones (`MeasuredWindow`: with `config.window` = "steady" the first 2·C
    and the last C of them are left out as warm-up and cool-down; with "all" none is). Records
    left out stay in requests.jsonl marked `extra.phase`, and ITL counts the steps taken while
    measuring.
    Nothing is left at `out_dir` if the run fails or is
    interrupted. `progress(simulated_s, requests_done)` is called every few hundred requests.
    Everything is deterministic: the same config gives byte-identical files.
    """
    deployment = build_deployment(config)
    slo = parse_slo(config.slo) if config.slo else None
    window = _window(config)
    workload = _workload(config, deployment.model.max_position_embeddings)
    builder = SummaryBuilder(slo)
    trace_file: list[TextIO] = []

    def on_itl(value_s: float, count: int) -> None:
        if window is None or window.measuring:
            builder.add_itl(value_s, count)

    def on_iteration(row: IterationRow) -> None:
        trace_file[0].write(row.csv_line() + "\n")

    engine = deployment.engine
    sim = Simulation(workload, engine=engine, replicas=deployment.replicas, router=config.router,
                     disagg=deployment.disagg, fast=config.fast, on_itl=on_itl,
                     on_iteration=on_iteration if config.iteration_trace else None,
                     concurrency=config.concurrency, warmup=config.warmup)
    record_config = {
        "command": "simulate",
        "paretoserve_version": importlib.metadata.version("paretoserve"),
        "simulate": config.model_dump(mode="json"),
        "derived": {**deployment.derived, "energy_model": ACTIVITY_NOTE, "estimated": True},
    }
    with RunWriter(out_dir, record_config, keep_partial=False, flush_every=4096, slo=slo, estimated=True,
                   inputs=(config.trace, config.profile, config.model, config.hardware)) as writer:
        if config.iteration_trace:
            handle = writer.open_extra(ITERATIONS_FILE)
            handle.write(IterationRow.csv_header() + "\n")
            trace_file.append(handle)
        try:
            done = 0
            for record in sim:
                if window is None or window.measured(record):
                    builder.add(record)
                writer.add(record)
                done += 1
                if progress is not None and done % _PROGRESS_EVERY == 0:
                    progress(sim.now, done)
        finally:
            for handle in trace_file:
                handle.close()
        stats = sim.stats
        if progress is not None:
            progress(stats.duration_s, done)
        summary = builder.finish(kv_peak_fraction=stats.kv_peak_fraction,
                                 energy_j=energy_joules(stats, deployment.device, config.activity),
                                 cost_usd=cost_usd(stats, deployment.device), estimated=True)
        writer.finish(summary)
    return summary


def _window(config: SimulateConfig) -> MeasuredWindow | None:
    """The measured window of a closed-loop run (None: every request is summarised)."""
    if not config.closed_loop:
        if config.warmup or config.window != "steady":
            raise UserError("--warmup and --window shape a closed loop (--concurrency without a rate)",
                            field="warmup" if config.warmup else "window")
        return None
    if config.requests is None:
        raise UserError("a closed-loop run (--concurrency without a rate) needs --requests", field="requests")
    if config.duration_s is not None:
        raise UserError("a closed-loop run is sized by --requests, not --duration", field="duration_s")
    assert config.concurrency is not None
    return MeasuredWindow(config.concurrency, config.requests, warmup=config.warmup,
                          steady=config.window == "steady")


def _workload(config: SimulateConfig, max_context: int) -> Iterator[Request]:
    """The requests of `config`; in a closed loop the warm-up and then the measured requests, all due
    at 0 s (the users send them in order)."""
    if not config.closed_loop:
        return iter_workload(config.trace, arrival=config.arrival, rate=config.rate,
                             rate_scale=config.rate_scale, requests=config.requests,
                             duration_s=config.duration_s, prompt=config.prompt, output=config.output,
                             seed=config.seed, max_context=max_context)
    assert config.requests is not None
    source = iter_workload(config.trace, arrival="trace" if config.trace else "constant",
                           rate=None if config.trace else 1.0, requests=config.warmup + config.requests,
                           duration_s=config.duration_s, prompt=config.prompt, output=config.output,
                           seed=config.seed, max_context=max_context)
    return (replace(r, arrival_s=0.0) for r in source)
