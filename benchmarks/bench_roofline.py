"""Roofline vs measured kernels (H100 SXM, vLLM 0.19 tables in shared/data/kernels), and the cost
of one `step_time` call on the simulator's hot path.

Error = |predicted − measured| / measured per measured point, with default efficiencies.
"""

from __future__ import annotations

import timeit
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from paretoserve.catalog.device import load_device
from paretoserve.catalog.model import load_model
from paretoserve.perf.kernels import (
    attention_seconds,
    context_attention_cost,
    gemm_seconds,
    generation_attention_cost,
)
from paretoserve.perf.roofline import Roofline
from paretoserve.perf.shape import StepShape

KERNELS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kernels" / "h100_sxm"
VERSION = "0.19.0"
DTYPES = {"bfloat16": "bf16", "fp8": "fp8", "fp8_block": "fp8"}


def _errors(pred: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    ape = np.abs(pred - measured) / measured
    return float(np.median(ape)), float(np.percentile(ape, 90))


def gemm_rows(device) -> list[dict]:
    t = pq.read_table(KERNELS / "gemm" / "vllm" / VERSION / "gemm_perf.parquet").to_pydict()
    pred = np.array([gemm_seconds(device, m, n, k, DTYPES[d])
                     for m, n, k, d in zip(t["m"], t["n"], t["k"], t["gemm_dtype"], strict=True)])
    med, p90 = _errors(pred, np.array(t["latency"]) / 1e3)
    return [{"name": "GEMM median APE", "value": med * 100, "unit": "%", "note": f"{len(pred):,} shapes"},
            {"name": "GEMM p90 APE", "value": p90 * 100, "unit": "%"}]


def attention_rows(device) -> list[dict]:
    rows = []
    for kind, cost in (("context", context_attention_cost), ("generation", generation_attention_cost)):
        path = KERNELS / "attention" / "vllm" / VERSION / f"{kind}_attention_perf.parquet"
        t = pq.read_table(path).to_pydict()
        length = t["isl"] if kind == "context" else t["step"]
        pred = np.array([
            attention_seconds(device, *cost(b, s, h, kv, d, DTYPES[dt], w))
            for b, s, h, kv, d, dt, w in zip(t["batch_size"], length, t["num_heads"],
                                             t["num_key_value_heads"], t["head_dim"],
                                             t["kv_cache_dtype"], t["window_size"], strict=True)])
        med, p90 = _errors(pred, np.array(t["latency"]) / 1e3)
        rows += [{"name": f"{kind} attention median APE", "value": med * 100, "unit": "%",
                  "note": f"{len(pred):,} shapes"},
                 {"name": f"{kind} attention p90 APE", "value": p90 * 100, "unit": "%"}]
    return rows


def step_cost_rows(device) -> list[dict]:
    rf = Roofline(load_model("Meta-Llama-3.1-8B"), device)
    shape = StepShape(decode=tuple(range(1000, 1064)))
    n = 20_000
    full = timeit.timeit(lambda: rf.step_time(shape), number=n) / n
    fast = timeit.timeit(lambda: rf.seconds(shape), number=n) / n
    agg = timeit.timeit(lambda: rf.decode_seconds(64, 65_000), number=n) / n
    return [{"name": "step_time() 64-seq decode, Llama-3.1-8B", "value": full * 1e6, "unit": "µs/call",
             "note": "with per-operator breakdown"},
            {"name": "seconds() same shape", "value": fast * 1e6, "unit": "µs/call", "baseline": full * 1e6,
             "ratio": fast / full},
            {"name": "decode_seconds(64, ctx_sum)", "value": agg * 1e6, "unit": "µs/call",
             "baseline": full * 1e6, "ratio": agg / full, "note": "target < 20 µs"}]


def run() -> list[dict]:
    device = load_device("h100_sxm")
    return gemm_rows(device) + attention_rows(device) + step_cost_rows(device)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from run_all import main

    main(["roofline"])
