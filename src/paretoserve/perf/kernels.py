"""Roofline time of single kernels (GEMM, context and generation attention).

The same FLOP and byte counts as the operators of `Roofline`, for one kernel call with a shape as
measured in kernel tables (the schema of shared/data/kernels). Used to compare the roofline with
measurements and, by calibration, to fit efficiencies. All-reduce times are `perf.comm`'s.
"""

from __future__ import annotations

from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dtypes import dtype_bytes
from paretoserve.perf.roofline import Efficiency


def roofline_seconds(flops: float, nbytes: float, peak: float, bandwidth: float, fixed: float) -> float:
    """fixed + max(flops / peak, bytes / bandwidth), in seconds."""
    return fixed + max(flops / peak if peak else 0.0, nbytes / bandwidth if bandwidth else 0.0)


def gemm_cost(m: int, n: int, k: int, dtype: str) -> tuple[float, float]:
    """(FLOPs, bytes) of [m × k] @ [k × n] with inputs in `dtype` and a bf16 output."""
    return 2.0 * m * n * k, (m * k + k * n) * dtype_bytes(dtype) + m * n * 2.0


def gemm_seconds(device: DeviceSpec, m: int, n: int, k: int, dtype: str = "bf16",
                 eff: Efficiency | None = None) -> float:
    """Roofline seconds of one GEMM on `device`."""
    eff = eff or Efficiency()
    flops, nbytes = gemm_cost(m, n, k, dtype)
    return roofline_seconds(flops, nbytes, device.peak_flops(dtype) * eff.gemm,
                            device.mem_bandwidth * eff.memory, eff.kernel_latency_s)


def context_attention_cost(batch: int, seq: int, heads: int, kv_heads: int, head_dim: int,
                           kv_dtype: str = "bf16", window: int = 0) -> tuple[float, float]:
    """(FLOPs, bytes) of causal self-attention over `batch` prompts of `seq` tokens.

    Each query attends to the keys before it (or the last `window` of them): QKᵀ and PV cost
    4 × heads × head_dim FLOPs per (query, key) pair. Bytes: Q and O in bf16, K and V written to
    and read from the cache once.
    """
    pairs = seq * min((seq + 1) / 2, window) if window else seq * (seq + 1) / 2
    flops = 4.0 * heads * head_dim * pairs * batch
    kv = 2.0 * kv_heads * head_dim * seq * batch * dtype_bytes(kv_dtype)
    qo = 2.0 * heads * head_dim * seq * batch * 2.0
    return flops, qo + 2.0 * kv


def generation_attention_cost(batch: int, context: int, heads: int, kv_heads: int, head_dim: int,
                              kv_dtype: str = "bf16", window: int = 0) -> tuple[float, float]:
    """(FLOPs, bytes) of one decode step: `batch` queries each reading `context` cached tokens."""
    attended = min(context, window) if window else context
    flops = 4.0 * heads * head_dim * attended * batch
    kv = 2.0 * kv_heads * head_dim * attended * batch * dtype_bytes(kv_dtype)
    return flops, kv + 2.0 * heads * head_dim * batch * 2.0


def attention_seconds(device: DeviceSpec, flops: float, nbytes: float,
                      eff: Efficiency | None = None) -> float:
    """Roofline seconds of an attention kernel with the given cost."""
    eff = eff or Efficiency()
    return roofline_seconds(flops, nbytes, device.peak_flops("bf16") * eff.attention,
                            device.mem_bandwidth * eff.memory, eff.kernel_latency_s)
