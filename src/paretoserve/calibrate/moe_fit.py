"""Fit the grouped-GEMM constants (`paretoserve.perf.grouped_gemm`) to a fused-MoE kernel table.

Table schema (engine_facts.md §2 "moe_perf"): moe_dtype, num_tokens (tokens entering the rank),
hidden_size, inter_size (unsharded), topk, num_experts, moe_tp_size, moe_ep_size, distribution,
latency (ms). Only `balanced` rows are used (round-robin routing: rank 0 gets T·k / ep selections
and touches the expected distinct experts of its E / ep). Peaks are the catalog device's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.optimize import least_squares

from paretoserve.catalog.device import DeviceSpec
from paretoserve.errors import UserError
from paretoserve.perf.grouped_gemm import GroupedGemm

_WEIGHT_BYTES = {"bfloat16": 2.0, "fp8": 1.0, "fp8_block": 1.0}
_COMPUTE = {"bfloat16": "bf16", "fp8": "fp8", "fp8_block": "fp8"}
_COLUMNS = ("moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts",
            "moe_tp_size", "moe_ep_size", "distribution", "latency")


def read_moe_table(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a moe_perf table (latency converted to seconds); UserError for a bad file."""
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read fused-MoE table ({exc})", file=str(path)) from None
    missing = [c for c in _COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(f"not a fused-MoE table: missing column(s) {', '.join(missing)}", file=str(path))
    out = {c: np.asarray(table.column(c).to_pylist()) for c in _COLUMNS}
    out["latency"] = out["latency"].astype(float) / 1e3
    return out


def features(t: dict[str, np.ndarray], dtype: str, device: DeviceSpec) -> dict[str, np.ndarray]:
    """Per balanced row of `dtype`: the quantities of the grouped-GEMM formula and the latency."""
    m = (t["moe_dtype"] == dtype) & (t["distribution"] == "balanced")
    tokens, k, e = (t[c][m].astype(float) for c in ("num_tokens", "topk", "num_experts"))
    ep, mtp = t["moe_ep_size"][m].astype(float), t["moe_tp_size"][m].astype(float)
    h, inter = t["hidden_size"][m].astype(float), t["inter_size"][m].astype(float)
    local = e / ep
    return {"selections": tokens * k / ep, "experts": local * (1.0 - (1.0 - k / e) ** tokens),
            "entering": tokens * k, "weights": 3.0 * h * inter / mtp, "hidden": h,
            "latency": t["latency"][m], "shape": np.stack([h, inter, k, e], axis=1),
            "peak": np.full(m.sum(), device.peak_flops(_COMPUTE[dtype])),
            "bandwidth": np.full(m.sum(), device.mem_bandwidth),
            "wbytes": np.full(m.sum(), _WEIGHT_BYTES[dtype])}


def predict(c: np.ndarray, f: dict[str, np.ndarray]) -> np.ndarray:
    """Seconds of each row for constants c = (fixed, e_c, e_m, e_p, t_half) (vectorised formula)."""
    fixed, ec, em, ep, half = c
    compute = 2.0 * f["weights"] * (f["selections"] + half * f["experts"]) / (f["peak"] * ec)
    memory = (f["experts"] * f["weights"] * f["wbytes"] + f["selections"] * 4.0 * f["hidden"]) / (f["bandwidth"] * em)
    permute = f["entering"] * 4.0 * f["hidden"] / (f["bandwidth"] * ep)
    return fixed + np.maximum(compute, memory) + permute


def _fit(f: dict[str, np.ndarray]) -> np.ndarray:
    result = least_squares(lambda c: np.log(predict(c, f) / f["latency"]), [3e-5, 0.5, 0.8, 0.5, 50.0],
                           bounds=([0.0, 0.01, 0.01, 0.01, 0.0], [1e-3, 1.5, 1.5, 5.0, 1e4]))
    return result.x


def fit_grouped_gemm(t: dict[str, np.ndarray], dtype: str, device: DeviceSpec) -> GroupedGemm:
    """The constants minimising the log error over the balanced rows of `dtype`."""
    f = features(t, dtype, device)
    if not len(f["latency"]):
        raise UserError(f"fused-MoE table has no balanced {dtype} rows")
    c = _fit(f)
    return GroupedGemm(fixed_s=float(c[0]), compute_eff=float(c[1]), memory_eff=float(c[2]),
                       permute_eff=float(c[3]), half_tokens=float(c[4]))


def leave_one_shape_out(t: dict[str, np.ndarray], dtype: str, device: DeviceSpec) -> np.ndarray:
    """|relative error| of every row predicted by constants fitted without its model shape
    (hidden, inter, top-k, experts): each shape's rows are held out together."""
    f = features(t, dtype, device)
    shapes, group = np.unique(f["shape"], axis=0, return_inverse=True)
    errors = np.empty(len(f["latency"]))
    for g in range(len(shapes)):
        out = group == g
        train = {k: v[~out] for k, v in f.items()}
        test = {k: v[out] for k, v in f.items()}
        errors[out] = np.abs(predict(_fit(train), test) / test["latency"] - 1.0)
    return errors
