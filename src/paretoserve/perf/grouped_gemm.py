"""Grouped-GEMM (fused MoE) time of the routed experts of one MoE layer on one EP rank.

With S (token, expert) selections computed on the rank, X distinct local experts touched, T·k
selections entering the layer (every token of every attention-DP rank × top-k) and F = matrices ×
hidden × expert_intermediate / moe_tp weights per expert on the rank:

    t = L0 + max(2F (S + t_half X) / (peak × e_c), (X F w + S a) / (bandwidth × e_m))
           + T k × 4 hidden / (bandwidth × e_p)

- the compute efficiency falls with fewer tokens per expert t_e = S / X as e_c × t_e / (t_e + t_half)
  (tile padding: each active expert costs about t_half extra rows);
- weight bytes are those of the touched experts (w bytes per weight), activations a = 4 × hidden
  bytes per selection (read and write, 16-bit);
- the last term is the permute / un-permute of every selection entering the layer (16-bit
  activations read and written), paid even by a rank that holds few of the selected experts;
- L0 is the fixed cost of the fused-MoE kernels.

Constants fitted by `paretoserve.calibrate.moe_fit.fit_grouped_gemm` to the balanced rows of the
shipped H100 SXM vLLM 0.19.0 fused-MoE table (shared/data/kernels/h100_sxm/moe/vllm/0.19.0/
moe_perf.parquet, 4,347 rows per dtype; peaks 989 / 1979 TFLOP/s bf16 / fp8, 3.35 TB/s), minimising
the log error; leave-one-shape-out error in benchmarks/bench_fidelity.py. Weight-only formats
(int4, fp4 on Hopper) use the bf16 constants.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GroupedGemm:
    """Fitted constants (module docstring): seconds, efficiencies (fractions of peak), rows."""

    fixed_s: float
    compute_eff: float
    memory_eff: float
    permute_eff: float
    half_tokens: float


#: Fitted constants per kernel-table dtype (values from `fit_grouped_gemm`, rounded to 3 digits).
SHIPPED: dict[str, GroupedGemm] = {
    "bfloat16": GroupedGemm(fixed_s=36.7e-6, compute_eff=0.587, memory_eff=0.803, permute_eff=0.472, half_tokens=106.0),
    "fp8": GroupedGemm(fixed_s=36.4e-6, compute_eff=0.533, memory_eff=0.754, permute_eff=0.391, half_tokens=55.3),
    "fp8_block": GroupedGemm(fixed_s=47.3e-6, compute_eff=0.320, memory_eff=0.792, permute_eff=0.334, half_tokens=51.9),
}


def constants_for(table_dtype: str) -> GroupedGemm:
    """The constants of a kernel-table dtype ("bfloat16", "fp8", "fp8_block"; others: bf16)."""
    return SHIPPED.get(table_dtype, SHIPPED["bfloat16"])

