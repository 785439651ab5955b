"""Simulator benchmarks (issue 3): speed, memory, fidelity, and where the time goes.

1. Speed: requests simulated per wall-clock second (best of 3) on one Llama-3.1-8B H100 SXM replica
   (datasheet roofline, vLLM policy): the bundled `azure-conv` trace at its native rate (256 seqs /
   8,192 tokens), and the peers' 10,000-request trace (128 seqs / 4,096 tokens; Vidur ~630 req/s,
   BLIS ~2,400, DistServe's simulator ~300–590 measured on this kind of machine). Baseline: the
   same run stepping one iteration at a time (`fast=False`).
2. Memory: a synthetic run (Poisson at azure-conv's mean rate, its length distribution) of
   `PARETOSERVE_BENCH_SIM_REQUESTS` requests (default 1,000,000), records streamed to a JSONL file,
   in a fresh process; peak RSS from `resource.getrusage`.
3. Fidelity: the real vLLM 0.19 run on an RTX 4090 in shared/data/serving_runs replayed (its
   arrivals and token counts, its engine settings from meta.json: max_num_seqs, 2,048 batched
   tokens, 2,588 blocks × 16 = 41,408 KV tokens, prefix caching on) on the datasheet roofline:
   signed % error of TTFT, TPOT and E2E (mean, p50, p90, p99).
4. Profile: cProfile of the azure-conv run, share of time of the top functions.

Standalone: `python benchmarks/bench_sim.py` (about 2–3 minutes with the 1,000,000-request run).
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from paretoserve.bench.importers import import_vllm_requests, vllm_run_settings
from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.perf.memory import kv_capacity
from paretoserve.perf.roofline import Roofline
from paretoserve.sim import simulate
from paretoserve.workload.request import Request
from paretoserve.workload.synthetic import iter_workload
from paretoserve.workload.traces import load_trace

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PEER_TRACE = DATA / "traces" / "peer_bench_conv_10k_4.5rps.csv"
REAL_RUN = DATA / "serving_runs" / "rtx4090_llama3.1-8b_vllm0.19"
MODEL = "Meta-Llama-3.1-8B"
MILLION = int(os.environ.get("PARETOSERVE_BENCH_SIM_REQUESTS", "1000000"))


def _h100() -> tuple[Roofline, int]:
    """A fresh roofline (its decode-time cache empty) and the KV tokens of one H100 replica."""
    model, device = load_model(MODEL), load_device("h100_sxm")
    return Roofline(model, device), kv_capacity(model, device).tokens


def _rate(requests: list[Request], fast: bool, repeats: int, **engine: object) -> tuple[float, float]:
    """Best requests simulated per wall-clock second and per CPU second over `repeats` runs, each
    on a fresh roofline so that no run profits from an earlier one's cache."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        step_model, _ = _h100()
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in simulate(requests, fast=fast, step_model=step_model, **engine):  # type: ignore[arg-type]
            pass
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return len(requests) / wall, len(requests) / cpu


def speed_rows() -> list[dict]:
    _, kv_tokens = _h100()
    rows = []
    cases = (("azure-conv", load_trace("azure-conv"), 256, 8192, "target >= 10,000 req/s"),
             ("peer 10k trace", load_trace(str(PEER_TRACE)), 128, 4096,
              "peers: Vidur ~630, BLIS ~2,400, DistServe ~300-590 req/s"))
    for name, requests, seqs, tokens, note in cases:
        engine = dict(kv_tokens=kv_tokens, max_num_seqs=seqs, max_num_batched_tokens=tokens)
        fast, fast_cpu = _rate(requests, True, 3, **engine)
        slow, _ = _rate(requests, False, 1, **engine)
        rows.append({"name": f"{name}: requests simulated / s", "value": fast, "unit": "req/s",
                     "baseline": slow, "ratio": fast / slow,
                     "note": f"{len(requests):,} requests; {fast_cpu:,.0f} per CPU second; "
                             f"baseline: step by step; {note}"})
    return rows


def million_run(count: int) -> dict:
    """Run `count` synthetic requests streaming records to a file; wall time and peak RSS."""
    roofline, kv_tokens = _h100()
    workload = iter_workload("azure-conv", arrival="poisson", requests=count, seed=0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    done = 0
    with tempfile.TemporaryDirectory() as folder, open(Path(folder) / "requests.jsonl", "w") as out:
        sim = simulate(workload, step_model=roofline, kv_tokens=kv_tokens)
        for record in sim:
            out.write(record.to_json() + "\n")
            done += 1
        size = out.tell()
    wall = time.perf_counter() - start
    return {"requests": done, "wall_s": wall, "rss_before_mb": rss_before,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "simulated_s": sim.stats.duration_s, "jsonl_bytes": size}


def million_rows() -> list[dict]:
    out = subprocess.run([sys.executable, __file__, "--million", str(MILLION)], check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    note = (f"{result['requests']:,} requests, {result['simulated_s'] / 3600:,.0f} h simulated, "
            f"{result['jsonl_bytes'] / 1e6:,.0f} MB of records streamed")
    return [
        {"name": "synthetic run: wall time", "value": result["wall_s"], "unit": "s", "note": note},
        {"name": "synthetic run: requests / s (records written)",
         "value": result["requests"] / result["wall_s"], "unit": "req/s"},
        {"name": "synthetic run: peak RSS", "value": result["peak_rss_mb"], "unit": "MiB",
         "baseline": result["rss_before_mb"], "ratio": result["peak_rss_mb"] / result["rss_before_mb"],
         "note": "baseline: peak RSS before the first request (imports, length pool)"},
    ]


def _stats(values: list[float]) -> list[float]:
    array = np.asarray(values)
    return [float(array.mean()), *np.percentile(array, [50, 90, 99]).tolist()]


def fidelity_rows() -> list[dict]:
    real = import_vllm_requests(REAL_RUN / "requests.jsonl")
    settings = vllm_run_settings(REAL_RUN)
    requests = [Request(r.request_id, r.arrival_s, r.prompt_tokens, r.output_tokens) for r in real if r.ok]
    roofline = Roofline(load_model(MODEL), load_device("rtx_4090"))
    simulated = {r.request_id: r for r in simulate(
        requests, step_model=roofline, kv_tokens=settings["num_gpu_blocks"] * settings["block_size"],
        block_size=settings["block_size"], max_num_seqs=settings["max_num_seqs"],
        max_num_batched_tokens=settings["max_num_batched_tokens"],
        prefix_caching=bool(settings["enable_prefix_caching"]))}
    rows = []
    for metric, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "E2E")):
        pairs = [(getattr(r, metric), getattr(simulated[r.request_id], metric)) for r in real if r.ok]
        pairs = [(m, s) for m, s in pairs if m is not None and s is not None]
        measured, predicted = _stats([m for m, _ in pairs]), _stats([s for _, s in pairs])
        for stat, m, s in zip(("mean", "p50", "p90", "p99"), measured, predicted, strict=True):
            rows.append({"name": f"fidelity {label} {stat}", "value": (s - m) / m * 100, "unit": "% error",
                         "note": f"simulated {s * 1e3:,.1f} ms vs measured {m * 1e3:,.1f} ms"})
    return rows


def profile_rows(top: int = 6) -> list[dict]:
    roofline, kv_tokens = _h100()
    requests = load_trace("azure-conv")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in simulate(requests, step_model=roofline, kv_tokens=kv_tokens):
        pass
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    entries = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]  # type: ignore[attr-defined]
    rows = []
    for (filename, line, function), (_, calls, own, _, _) in entries:
        where = f"{Path(filename).parent.name}/{Path(filename).name}:{line}" if line else filename
        rows.append({"name": f"profile: {function}", "value": own / total * 100, "unit": "% own time",
                     "note": f"{where}, {calls:,} calls"})
    return rows


def run() -> list[dict]:
    return speed_rows() + million_rows() + fidelity_rows() + profile_rows()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--million":
        print(json.dumps(million_run(int(sys.argv[2]))))
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from run_all import main

        main(["sim"])
