"""The fitted parts of the calibrated latency model: kernel-efficiency grids and global coefficients.

This is the data a profile file holds and `Calibrated` evaluates; fitting it from measurements is
`paretoserve.calibrate` (which imports this module, never the other way round).

For a kernel call the **efficiency** is e = ideal / measured, where `ideal_seconds` is the roofline
time at 100% of the device's datasheet peaks with no fixed latency. `ln e` is stored on a
rectilinear grid in log-shape space (one `Grid` per categorical group: GEMM dtype; attention KV
dtype and window; all-reduce GPU count), every node filled. A query inside the grid is multilinear
interpolation of `ln e` in log shape (`scipy.interpolate.RegularGridInterpolator`); outside it, each
coordinate is clamped to the edge, i.e. the time is the roofline scaled by the nearest node's
efficiency.

GEMM tiles make the token dimension `m` non-smooth, so a grid's axis 0 may carry **alignment
classes** (m divisible by 16, by 4, neither): a query interpolates among the nodes of its own class
when that class has nodes on both sides of it, and among all nodes otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dtypes import dtype_bytes
from paretoserve.perf.overhead import STEP_OVERHEAD_S

#: Table dtype names -> canonical dtype of the arithmetic.
GEMM_DTYPES: dict[str, str] = {"bfloat16": "bf16", "float16": "fp16", "bf16": "bf16", "fp16": "fp16",
                               "fp8": "fp8", "fp8_block": "fp8", "float32": "fp32", "fp32": "fp32"}
#: Which measured GEMM group stands in for a missing one, in order.
GEMM_FALLBACK: dict[str, tuple[str, ...]] = {
    "fp8_block": ("fp8_block", "fp8", "bfloat16"),
    "fp8": ("fp8", "fp8_block", "bfloat16"),
    "bfloat16": ("bfloat16", "float16", "fp8"),
    "float16": ("float16", "bfloat16", "fp8"),
    "float32": ("float32", "bfloat16"),
}
#: Optional categorical columns of each kernel kind and their default (0 = full attention).
OPTIONAL_COLUMNS: dict[str, dict[str, int]] = {
    "context_attention": {"window_size": 0},
    "generation_attention": {"window_size": 0},
}
_KV_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp8": "fp8", "int8": "int8", "fp32": "float32"}


def table_dtype(dtype: str) -> str:
    """The kernel-table spelling of a canonical dtype ("bf16" -> "bfloat16")."""
    return _KV_NAMES.get(dtype, dtype)


@dataclass(frozen=True, slots=True)
class Coefficients:
    """Global corrections fitted end to end (from a bench run); identity by default, except the
    per-iteration overhead, which defaults to the datasheet model's (`overhead.STEP_OVERHEAD_S`):
    kernel tables do not hold it.

    Attributes:
        compute_scale: multiplies compute efficiency (2.0 = compute-bound work twice as fast).
        memory_scale: multiplies memory-bandwidth efficiency.
        step_overhead_s: seconds added to every iteration (scheduler, sampling, launch gaps).
        token_overhead_s: seconds added per token in the iteration (input prep, detokenization).
    """

    compute_scale: float = 1.0
    memory_scale: float = 1.0
    step_overhead_s: float = STEP_OVERHEAD_S
    token_overhead_s: float = 0.0

    def to_dict(self) -> dict[str, float]:
        """Plain dict (profile file)."""
        return {"compute_scale": self.compute_scale, "memory_scale": self.memory_scale,
                "step_overhead_s": self.step_overhead_s, "token_overhead_s": self.token_overhead_s}


# ---------------------------------------------------------------------------------------- ideal times
def ideal_seconds(kind: str, device: DeviceSpec, shape: Mapping[str, Any],
                  category: Mapping[str, object]) -> np.ndarray:
    """Roofline seconds at 100% of the datasheet peaks, no fixed latency, for arrays of shapes.

    FLOP and byte counts are those of `paretoserve.perf.kernels` (vectorized): GEMM
    [m × k] @ [k × n] with inputs in its dtype and a 16-bit output; causal context attention;
    one decode step of attention; ring all-reduce of `message_size` bytes.
    """
    if kind == "gemm":
        dtype = GEMM_DTYPES.get(str(category["gemm_dtype"]), "bf16")
        m, n, k = (np.asarray(shape[c], dtype=np.float64) for c in ("m", "n", "k"))
        flops = 2.0 * m * n * k
        nbytes = (m * k + k * n) * dtype_bytes(dtype) + m * n * 2.0
        return np.maximum(flops / device.peak_flops(dtype), nbytes / device.mem_bandwidth)
    if kind in ("context_attention", "generation_attention"):
        b, heads, kv_heads, head_dim = (np.asarray(shape[c], dtype=np.float64) for c in
                                        ("batch_size", "num_heads", "num_key_value_heads", "head_dim"))
        window = float(category.get("window_size", 0) or 0)
        kvb = dtype_bytes(str(category.get("kv_cache_dtype", "bfloat16")))
        if kind == "context_attention":
            seq = np.asarray(shape["isl"], dtype=np.float64)
            half = (seq + 1) / 2
            pairs = seq * (np.minimum(half, window) if window else half)
            flops = 4.0 * heads * head_dim * pairs * b
            qo = 2.0 * heads * head_dim * seq * b * 2.0
            nbytes = qo + 2.0 * (2.0 * kv_heads * head_dim * seq * b * kvb)
        else:
            ctx = np.asarray(shape["step"], dtype=np.float64)
            attended = np.minimum(ctx, window) if window else ctx
            flops = 4.0 * heads * head_dim * attended * b
            nbytes = 2.0 * kv_heads * head_dim * attended * b * kvb + 2.0 * heads * head_dim * b * 2.0
        return np.maximum(flops / device.peak_flops("bf16"), nbytes / device.mem_bandwidth)
    if kind == "allreduce":
        gpus = np.asarray(shape["num_gpus"], dtype=np.float64)
        size = np.asarray(shape["message_size"], dtype=np.float64)
        return 2.0 * (gpus - 1) / gpus * size / device.intra_node_bandwidth
    raise ValueError(f"unknown kernel kind {kind}")


# ---------------------------------------------------------------------------------------- the grid
def align_class(values: np.ndarray, align: tuple[int, ...]) -> np.ndarray:
    """Alignment class of each value: the first of `align` dividing it, else 1."""
    ints = np.round(values).astype(np.int64)
    cls = np.ones(len(ints), dtype=np.int64)
    for a in reversed(align):
        cls[ints % a == 0] = a
    return cls


def class_nodes(axis_values: np.ndarray, align: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Node indices of each alignment class present on an axis (empty without `align`)."""
    if not align:
        return {}
    cls = align_class(axis_values, align)
    return {a: idx for a in (*align, 1) if len(idx := np.flatnonzero(cls == a))}


class _Interpolator:
    """Multilinear interpolation of `table` over log-axes `logv`, inputs clamped to the grid.

    `scipy.interpolate.RegularGridInterpolator` needs two nodes per axis: an axis with a single
    node is constant and dropped.
    """

    def __init__(self, logv: tuple[np.ndarray, ...], table: np.ndarray) -> None:
        from scipy.interpolate import RegularGridInterpolator

        self.lo = np.array([v[0] for v in logv])
        self.hi = np.array([v[-1] for v in logv])
        self.free = [i for i, v in enumerate(logv) if len(v) > 1]
        single = tuple(slice(None) if len(v) > 1 else 0 for v in logv)
        values = table[single]
        self.rgi = RegularGridInterpolator([logv[i] for i in self.free], values) if self.free else None
        self.constant = float(values) if not self.free else 0.0

    def __call__(self, logp: np.ndarray) -> np.ndarray:
        if self.rgi is None:
            return np.full(len(logp), self.constant)
        return self.rgi(np.clip(logp, self.lo, self.hi)[:, self.free])


@dataclass
class Grid:
    """`ln e` on a rectilinear grid over log-shape axes, every node filled.

    Attributes:
        axes: axis (shape column) names.
        values: sorted shape values of each axis.
        log_eff: natural log of the efficiency at each node (len(values[i]) along axis i).
        measured: True where the node was measured (False where filled).
        align: alignment classes of axis 0 (see module docstring); empty for none.
        log_values: ln of `values` (derived).
        classes: node indices of each alignment class on axis 0 (derived; empty for none).
    """

    axes: tuple[str, ...]
    values: tuple[np.ndarray, ...]
    log_eff: np.ndarray
    measured: np.ndarray
    align: tuple[int, ...] = ()
    log_values: tuple[np.ndarray, ...] = field(init=False, repr=False)
    classes: dict[int, np.ndarray] = field(init=False, repr=False)
    _whole: _Interpolator = field(init=False, repr=False)
    _by_class: dict[int, _Interpolator] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.values = tuple(np.asarray(v, dtype=np.float64) for v in self.values)
        self.log_values = tuple(np.log(v) for v in self.values)
        self.classes = class_nodes(self.values[0], self.align)
        self._whole = _Interpolator(self.log_values, self.log_eff)
        self._by_class = {a: _Interpolator((self.log_values[0][idx], *self.log_values[1:]), self.log_eff[idx])
                          for a, idx in self.classes.items() if len(idx) > 1}

    def query(self, points: np.ndarray) -> np.ndarray:
        """Multilinear interpolation of `ln e` at rows of shape values (clamped to the grid)."""
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        logp = np.log(np.maximum(points, 1e-300))
        if not self._by_class:
            return self._whole(logp)
        result = np.empty(len(points))
        rest = np.ones(len(points), dtype=bool)
        m = points[:, 0]
        cls = align_class(m, self.align)
        for a, interpolate in self._by_class.items():
            idx = self.classes[a]
            sel = (cls == a) & (m >= self.values[0][idx[0]]) & (m <= self.values[0][idx[-1]])
            if sel.any():
                result[sel] = interpolate(logp[sel])
                rest &= ~sel
        if rest.any():
            result[rest] = self._whole(logp[rest])
        return result

    def mapped(self, func: Callable[[np.ndarray], np.ndarray]) -> Grid:
        """A copy with `log_eff` replaced by func(log_eff)."""
        return Grid(self.axes, self.values, func(self.log_eff), self.measured.copy(), self.align)


# ---------------------------------------------------------------------------------------- per kind
@dataclass
class KernelFit:
    """Fitted efficiency of one kernel kind: one `Grid` per categorical group.

    Attributes:
        kind: kernel kind ("gemm", "context_attention", "generation_attention", "allreduce").
        group_columns: the categorical columns that key `groups`.
        groups: group key (tuple of str, in `group_columns` order) -> grid over the kind's shape
            columns (allreduce: axis message_size, grouped by num_gpus).
        points: measured rows used for the fit.
    """

    kind: str
    group_columns: tuple[str, ...]
    groups: dict[tuple[str, ...], Grid]
    points: int = 0

    def group_for(self, category: Mapping[str, object]) -> Grid:
        """The grid serving `category`, with the documented fallbacks for unmeasured groups."""
        key = tuple(str(category.get(c, OPTIONAL_COLUMNS.get(self.kind, {}).get(c, ""))) for c in
                    self.group_columns)
        if key in self.groups:
            return self.groups[key]
        if self.kind == "gemm":
            for name in GEMM_FALLBACK.get(key[0], (key[0],)) + tuple(k[0] for k in self.groups):
                if (name,) in self.groups:
                    return self.groups[(name,)]
        if self.kind == "allreduce":
            gpus = float(key[0])
            best = min(self.groups, key=lambda k: abs(math.log(float(k[0]) / gpus)))
            return self.groups[best]
        # attention: same KV dtype full attention, then bf16 with the window, then bf16 full, then any
        kv, window = key
        for cand in ((kv, "0"), ("bfloat16", window), ("bfloat16", "0")):
            if cand in self.groups:
                return self.groups[cand]
        return next(iter(self.groups.values()))

    def log_efficiency(self, shape: Mapping[str, Any], category: Mapping[str, object]) -> np.ndarray:
        """ln(efficiency) at the given shapes (arrays of equal length) for one category."""
        grid = self.group_for(category)
        cols = [np.asarray(shape[a], dtype=np.float64) for a in grid.axes]
        return grid.query(np.column_stack(cols))

    def seconds(self, device: DeviceSpec, shape: Mapping[str, Any],
                category: Mapping[str, object]) -> np.ndarray:
        """Predicted kernel seconds: ideal roofline seconds / fitted efficiency."""
        full = {**shape}
        if self.kind == "allreduce":
            full["num_gpus"] = np.broadcast_to(float(category["num_gpus"]), np.shape(shape["message_size"]))
        ideal = ideal_seconds(self.kind, device, full, category)
        return ideal / np.exp(self.log_efficiency(shape, category))
