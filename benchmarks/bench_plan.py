"""Planner speed: Llama-3.1-70B on the azure-conv trace, SLO TTFT p90 ≤ 2 s and TPOT p90 ≤ 100 ms, over
H100 / H200 / A100 / L40S with up to 16 GPUs (aggregated and disaggregated plans), on this machine;
and Ray with 2 workers against 1 on the same search (scaling ratio).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from paretoserve.metrics.slo import parse_slo
from paretoserve.plan.search import PlanSearch, run_search
from paretoserve.plan.space import SearchSpace
from paretoserve.workload.traces import load_trace

MODEL = "Meta-Llama-3.1-70B"
SLO = "ttft_p90=2s,tpot_p90=100ms"
REQUESTS = int(os.environ.get("PARETOSERVE_BENCH_PLAN_REQUESTS", "500"))


def space(devices: list[str]) -> SearchSpace:
    return SearchSpace(devices=devices, max_devices=16, tp=[1, 2, 4, 8], max_num_seqs=[128, 256],
                       max_num_batched_tokens=[2048, 8192], kv_dtypes=["bf16", "fp8"], max_pool_replicas=4)


def timed(search: PlanSearch) -> tuple[float, object]:
    start = time.perf_counter()
    outcome = run_search(search)
    return time.perf_counter() - start, outcome


def run() -> list[dict]:
    requests = load_trace("azure-conv")[:REQUESTS]
    slo = parse_slo(SLO)
    full = PlanSearch(MODEL, "azure-conv", requests, slo, space(["h100_sxm", "h200_sxm", "a100_sxm", "l40s"]),
                      executor="local", workers=2)
    serial_s, _ = timed(PlanSearch(**{**full.__dict__, "executor": "serial"}))
    wall_s, outcome = timed(full)
    best = outcome.recommended
    rows = [
        {"name": "candidate plans", "value": len(outcome.rows), "unit": "plans",
         "note": f"{outcome.units} engine capacity searches; {REQUESTS} requests each"},
        {"name": "plan search, 2 processes", "value": wall_s, "unit": "s", "baseline": serial_s,
         "ratio": wall_s / serial_s, "note": "baseline: same search, one process; target ≤ 300 s"},
        {"name": "Pareto front", "value": len(outcome.front), "unit": "plans",
         "note": f"recommended: {best['label']}" if best else "no plan meets the SLO"},
    ]
    nsga_s, nsga = timed(PlanSearch(**{**full.__dict__, "executor": "serial", "search": "nsga2", "trials": 300}))
    if best and nsga.recommended:
        ratio = nsga.recommended["usd_per_million_tokens"] / best["usd_per_million_tokens"]
        rows.append({"name": "NSGA-II search (300 trials, 1 process)", "value": nsga_s, "unit": "s",
                     "baseline": serial_s, "ratio": nsga_s / serial_s,
                     "note": f"{nsga.units} of {outcome.units} engine evaluations; best $/M tokens "
                             f"{ratio:.3f}× the exhaustive optimum"})
    rows += ray_rows(requests, slo)
    return rows


def ray_rows(requests, slo) -> list[dict]:
    """Ray with 2 workers vs 1 on a smaller space (H100 and A100 only), fresh local Ray each time."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return [{"name": "Ray scaling", "value": None, "note": "ray not installed"}]
    folder = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=folder)
    try:
        times = {}
        for workers in (1, 2):
            search = PlanSearch(MODEL, "azure-conv", requests, slo, space(["h100_sxm", "a100_sxm"]),
                                executor="ray", workers=workers)
            times[workers], outcome = timed(search)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [{"name": "Ray search, 1 worker", "value": times[1], "unit": "s",
             "note": f"{len(outcome.rows)} plans, {outcome.units} units; includes Ray start-up"},
            {"name": "Ray search, 2 workers", "value": times[2], "unit": "s", "baseline": times[1],
             "ratio": times[1] / times[2], "note": "ratio = speed-up over 1 worker"}]


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from run_all import main

    main(["plan"])
