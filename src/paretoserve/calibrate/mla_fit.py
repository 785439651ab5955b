"""MLA efficiency constants fitted to the shipped MLA module tables (engine_facts §2 "MLA").

The tables (AIConfigurator `mla_context_module_perf` / `mla_generation_module_perf`, vLLM 0.19 /
0.24, DeepSeek-V3 shapes) time the whole `DeepseekV2MLAAttention` forward of one layer on one GPU
with `num_heads` rank-local heads (128 / TP). Context rows: `batch_size` prompts of `isl` new tokens
after a prefix of `step` tokens; generation rows: `batch_size` decodes reading `step` KV tokens.
`latency` is in milliseconds.

Each row is priced with the operators of `paretoserve.perf.mla.mla_ops` (the roofline's MLA branch):
time = Σ_op fixed + max(FLOPs / (peak × e_kind), bytes / (bandwidth × e_memory)), with e_kind =
e_gemm for weight GEMMs and e_attention for the attention kernels. Per phase (context, generation)
five constants (e_gemm for bf16 and for fp8-block weights — block-scaled FP8 GEMMs do not reach
twice the bf16 rate —, e_attention, e_memory, fixed seconds per operator) are fitted by least
squares on log(predicted / measured) (SciPy), efficiencies bounded by 1. Leave-one-out errors come
from the leverages of the fit's Jacobian (r_i / (1 − h_ii), exact for a linear least-squares fit,
first order here). The datasheet model is the same formula with the roofline's default `Efficiency`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.optimize import least_squares

from paretoserve.calibrate.kernel_tables import pick_table
from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dtypes import dtype_bytes
from paretoserve.catalog.model import AttentionSpec
from paretoserve.errors import UserError
from paretoserve.perf.mla import MlaConstants, mla_ops
from paretoserve.perf.roofline import Efficiency

#: Table stem of each phase.
MLA_TABLES = {"context": "mla_context_module_perf", "generation": "mla_generation_module_perf"}
#: DeepSeek-V3's hidden size and MLA shape (the model every MLA module table measures).
DEEPSEEK_V3_HIDDEN = 7168
DEEPSEEK_V3_MLA = AttentionSpec("mla", num_heads=128, num_kv_heads=128, head_dim=128, v_head_dim=128,
                                q_lora_rank=1536, kv_lora_rank=512, rope_dim=64)
_GEMM_DTYPE = {"bfloat16": "bf16", "fp8_block": "fp8", "fp8": "fp8"}
_KV_DTYPE = {"bfloat16": "bf16", "fp8": "fp8"}


@dataclass(frozen=True)
class MlaTerms:
    """Ideal times of the MLA operators for each table row, at full datasheet peaks.

    Attributes:
        compute_gemm, compute_attention, memory: [rows × operators] seconds (FLOPs / peak or
            bytes / bandwidth); an operator is either a GEMM or an attention kernel, so one of its
            two compute columns is zero.
        runs: [rows × operators] True where the operator does work in that row.
        fp8: [rows] True where the weights (GEMMs) are FP8.
        measured_s: [rows] measured seconds.
    """

    compute_gemm: np.ndarray
    compute_attention: np.ndarray
    memory: np.ndarray
    runs: np.ndarray
    fp8: np.ndarray
    measured_s: np.ndarray


@dataclass(frozen=True)
class MlaFit:
    """Fitted constants of one phase and their errors (APE as fractions)."""

    phase: str
    gemm: float
    gemm_fp8: float
    attention: float
    memory: float
    fixed_s: float
    rows: int
    fit_median: float
    loo_median: float
    loo_p90: float
    datasheet_median: float
    datasheet_p90: float

    @property
    def constants(self) -> MlaConstants:
        """The fitted constants, as profiles store them and `Calibrated` uses them."""
        return MlaConstants(self.gemm, self.gemm_fp8, self.attention, self.memory, self.fixed_s)

    def quality(self) -> dict[str, float]:
        """Fit quality as a profile's `fit` entry (APE fractions, rounded)."""
        return {"points": self.rows, "loo_median": round(self.loo_median, 5), "loo_p90": round(self.loo_p90, 5),
                "datasheet_median": round(self.datasheet_median, 5),
                "datasheet_p90": round(self.datasheet_p90, 5)}


def read_mla_terms(path: str | Path, device: DeviceSpec, phase: str) -> MlaTerms:
    """Rows of one MLA module table as ideal operator times on `device`."""
    path = Path(path)
    if phase not in MLA_TABLES:
        raise UserError(f"MLA phase must be one of {', '.join(MLA_TABLES)}, got {phase!r}", file=str(path))
    try:
        cols = pq.read_table(path).to_pydict()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read MLA table: {exc}", file=str(path)) from None
    need = ("num_heads", "batch_size", "isl", "step", "latency", "kv_cache_dtype", "gemm_type")
    missing = [c for c in need if c not in cols]
    if missing:
        raise UserError(f"MLA table lacks column(s) {', '.join(missing)}", file=str(path))
    batch = np.asarray(cols["batch_size"], dtype=float)
    isl = np.asarray(cols["isl"], dtype=float)
    step = np.asarray(cols["step"], dtype=float)
    measured = np.asarray(cols["latency"], dtype=float) / 1e3
    agg = {"tokens": batch * isl, "pf_tokens": 0 * batch, "pf_kv": 0 * batch, "pf_pairs": 0 * batch,
           "decodes": 0 * batch, "dec_kv": 0 * batch}
    if phase == "context":
        agg["pf_tokens"] = batch * isl
        agg["pf_kv"] = batch * (step + isl)
        agg["pf_pairs"] = batch * isl * (step + (isl + 1) / 2)
    else:
        agg["decodes"] = batch
        agg["dec_kv"] = batch * step
    n = len(measured)
    names = [op.name for op in mla_ops(DEEPSEEK_V3_MLA, DEEPSEEK_V3_HIDDEN, 1, weight_bytes=2.0, kv_bytes=2.0,
                                       act_bytes=2.0)]
    shape = (n, len(names))
    cg, ca, mem, runs = np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=bool)
    keys = list(zip(cols["num_heads"], cols["kv_cache_dtype"], cols["gemm_type"], strict=True))
    for key in set(keys):
        h, kv, gemm = key
        if gemm not in _GEMM_DTYPE or kv not in _KV_DTYPE:
            raise UserError(f"MLA table: unknown gemm_type {gemm!r} or kv_cache_dtype {kv!r}", file=str(path))
        sel = np.array([k == key for k in keys])
        tp = DEEPSEEK_V3_MLA.num_heads / h
        wdt = _GEMM_DTYPE[gemm]
        ops = mla_ops(DEEPSEEK_V3_MLA, DEEPSEEK_V3_HIDDEN, tp, weight_bytes=dtype_bytes(wdt),
                      kv_bytes=dtype_bytes(_KV_DTYPE[kv]), act_bytes=2.0)
        for j, op in enumerate(ops):
            flops = sum(c * agg[a][sel] for a, c in op.flops.items())
            var = sum(c * agg[a][sel] for a, c in op.bytes.items())
            work = (flops > 0) | (var > 0)
            peak = device.peak_flops(wdt) if op.kind == "gemm" else device.peak_flops("bf16")
            (cg if op.kind == "gemm" else ca)[sel, j] = flops / peak
            mem[sel, j] = np.where(work, var + op.weight_bytes, 0.0) / device.mem_bandwidth
            runs[sel, j] = work
    fp8 = np.array([_GEMM_DTYPE[g] == "fp8" for g in cols["gemm_type"]])
    return MlaTerms(cg, ca, mem, runs, fp8, measured)


def predict_seconds(terms: MlaTerms, gemm: float, gemm_fp8: float, attention: float, memory: float,
                    fixed_s: float) -> np.ndarray:
    """Seconds of each row with efficiencies (fractions of peak; GEMMs by weight dtype) and fixed
    seconds per operator."""
    e_gemm = np.where(terms.fp8, gemm_fp8, gemm)[:, None]
    compute = terms.compute_gemm / e_gemm + terms.compute_attention / attention
    per_op = np.maximum(compute, terms.memory / memory) + fixed_s
    return np.where(terms.runs, per_op, 0.0).sum(axis=1)


def fit_mla(terms: MlaTerms, phase: str) -> MlaFit:
    """Least-squares fit of the five constants on log error, with leave-one-out and datasheet APEs."""
    log_meas = np.log(terms.measured_s)

    def residual(theta: np.ndarray) -> np.ndarray:
        e = np.exp(theta)
        return np.log(predict_seconds(terms, *e)) - log_meas

    d = Efficiency()
    start = np.log([d.gemm, d.gemm, d.attention, d.memory, d.kernel_latency_s])
    upper = np.array([0.0, 0.0, 0.0, 0.0, np.inf])  # efficiencies at most 1 (log space)
    sol = least_squares(residual, start, bounds=(-np.inf, upper), method="trf")
    r, jac = sol.fun, sol.jac
    leverage = np.einsum("ij,ji->i", jac, np.linalg.pinv(jac.T @ jac) @ jac.T)
    loo = r / np.clip(1.0 - leverage, 1e-6, None)
    e = np.exp(sol.x)
    sheet = np.abs(predict_seconds(terms, d.gemm, d.gemm, d.attention, d.memory, d.kernel_latency_s)
                   / terms.measured_s - 1.0)
    loo_ape = np.abs(np.expm1(loo))
    return MlaFit(phase, *(float(x) for x in e), len(r),
                  float(np.median(np.abs(np.expm1(r)))), float(np.median(loo_ape)),
                  float(np.percentile(loo_ape, 90)), float(np.median(sheet)), float(np.percentile(sheet, 90)))


def find_mla_tables(directory: str | Path, *, framework: str = "vllm",
                    version: str | None = None) -> dict[str, Path]:
    """The MLA module table of each phase under `directory` (flat, or `mla/<framework>/<version>/`
    as `kernel_tables.find_kernel_tables` picks tables); phases without one are left out."""
    out = {}
    for phase, stem in MLA_TABLES.items():
        path = pick_table(Path(directory), (stem,), framework, version)
        if path is not None and path.suffix == ".parquet":
            out[phase] = path
    return out


def fit_mla_tables(folder: str | Path, device: DeviceSpec) -> dict[str, MlaFit]:
    """Fit both phases from a folder holding `mla_context_module_perf.parquet` and
    `mla_generation_module_perf.parquet`."""
    folder = Path(folder)
    out = {}
    for phase, stem in MLA_TABLES.items():
        path = folder / f"{stem}.parquet"
        if not path.is_file():
            raise UserError(f"no MLA table {stem}.parquet", file=str(folder))
        out[phase] = fit_mla(read_mla_terms(path, device, phase), phase)
    return out
