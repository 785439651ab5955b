"""Per-kernel efficiency fitted from measured tables, as a function of shape.

For every measured kernel call the **efficiency** is

    e = ideal / measured,   ideal = max(FLOPs / peak FLOP/s, bytes / memory bandwidth)

with the device's datasheet peaks at 100% and no fixed latency (for all-reduce: ring bytes over the
intra-node link). Small kernels, dominated by launch latency, have e ≪ 1; large GEMMs approach the
fraction of peak their tiles reach.

`log e` is stored on a rectilinear grid in log-shape space (one grid per categorical group: GEMM
dtype; attention KV dtype and window; all-reduce GPU count). Grid nodes that were not measured (and
impossible ones such as more KV heads than query heads) are **filled** from their neighbours:
along each axis, linear interpolation (in log shape) between the nearest known nodes below and
above; the estimates of the axes that bracket the node are averaged with weights 1/gap² (the
closer the neighbours, the more it counts); repeated until nothing more can be bracketed; what is
left takes the efficiency of its nearest known node.

A query inside the grid is multilinear interpolation of `log e` in log shape; outside it, each
coordinate is clamped to the edge, i.e. the time is the roofline scaled by the nearest measured
efficiency. Leave-one-out predictions (`leave_one_out`) apply the fill rule to each measured node
from its other measured neighbours — what the fit would predict had that point not been measured.

GEMM tiles make the token dimension `m` non-smooth: on H100, m = 4096 and m = 4097 differ by up to
40% (padding to the next tile), and block-scaled FP8 is ~25% faster when m is a multiple of 4. The m
axis therefore interpolates within **alignment classes** (m divisible by 16, by 4, neither) when the
class has measurements on both sides, and across all m otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from paretoserve.calibrate.kernel_tables import CATEGORY_COLUMNS, OPTIONAL_COLUMNS, SHAPE_COLUMNS, KernelTable
from paretoserve.catalog.device import DeviceSpec
from paretoserve.catalog.dtypes import dtype_bytes
from paretoserve.errors import UserError
from paretoserve.perf.kernels import (
    allreduce_seconds,
    attention_seconds,
    context_attention_cost,
    gemm_seconds,
    generation_attention_cost,
)
from paretoserve.perf.roofline import Efficiency

#: Alignment classes of the GEMM m axis (largest first); m in none of them is class 1.
GEMM_ALIGN: tuple[int, ...] = (16, 4)
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
_KV_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp8": "fp8", "int8": "int8", "fp32": "float32"}


def table_dtype(dtype: str) -> str:
    """The kernel-table spelling of a canonical dtype ("bf16" -> "bfloat16")."""
    return _KV_NAMES.get(dtype, dtype)


# ---------------------------------------------------------------------------------------- ideal times
def ideal_seconds(kind: str, device: DeviceSpec, shape: Mapping[str, np.ndarray],
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
def _align_class(values: np.ndarray, align: tuple[int, ...]) -> np.ndarray:
    """Alignment class of each value: the first of `align` dividing it, else 1."""
    ints = np.round(values).astype(np.int64)
    cls = np.ones(len(ints), dtype=np.int64)
    for a in reversed(align):
        cls[ints % a == 0] = a
    return cls


@dataclass
class Grid:
    """`log e` on a rectilinear grid over log-shape axes, every node filled.

    Attributes:
        axes: axis (shape column) names.
        values: sorted shape values of each axis.
        log_eff: natural log of the efficiency at each node (len(values[i]) along axis i).
        measured: True where the node was measured (False where filled).
        align: alignment classes of axis 0 (see module docstring); empty for none.
    """

    axes: tuple[str, ...]
    values: tuple[np.ndarray, ...]
    log_eff: np.ndarray
    measured: np.ndarray
    align: tuple[int, ...] = ()
    _logv: tuple[np.ndarray, ...] = field(init=False, repr=False)
    _subsets: dict[int, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.values = tuple(np.asarray(v, dtype=np.float64) for v in self.values)
        self._logv = tuple(np.log(v) for v in self.values)
        self._subsets = {}
        if self.align:
            cls = _align_class(self.values[0], self.align)
            for a in (*self.align, 1):
                idx = np.flatnonzero(cls == a)
                if len(idx):
                    self._subsets[a] = idx

    # -------------------------------------------------------------- construction
    @classmethod
    def build(cls, axes: tuple[str, ...], points: np.ndarray, log_eff: np.ndarray,
              align: tuple[int, ...] = ()) -> Grid:
        """Grid through measured `points` (rows of shape values) with `log_eff` each; duplicates
        are averaged (in log), the rest of the grid is filled."""
        values = tuple(np.unique(points[:, i]).astype(np.float64) for i in range(points.shape[1]))
        index = tuple(np.searchsorted(values[i], points[:, i]) for i in range(points.shape[1]))
        shape = tuple(len(v) for v in values)
        total = np.zeros(shape)
        count = np.zeros(shape)
        np.add.at(total, index, log_eff)
        np.add.at(count, index, 1.0)
        grid = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        out = cls(axes, values, grid, count > 0, align)
        out.log_eff = out._fill(grid)
        return out

    def _fill(self, grid: np.ndarray) -> np.ndarray:
        grid = grid.copy()
        while np.isnan(grid).any():
            estimate, _ = self._axis_estimate(grid, strict=False)
            todo = np.isnan(grid) & np.isfinite(estimate)
            if todo.any():
                grid[todo] = estimate[todo]
                continue
            nearest = self._nearest(grid, strict=False)
            todo = np.isnan(grid) & np.isfinite(nearest)
            if not todo.any():  # pragma: no cover - a grid built from points always has one
                break
            grid[todo] = nearest[todo]
        return grid

    def leave_one_out(self) -> np.ndarray:
        """For every node, the fill rule's estimate from the other *measured* nodes (NaN if none)."""
        known = np.where(self.measured, self.log_eff, np.nan)
        estimate, _ = self._axis_estimate(known, strict=True)
        missing = np.isnan(estimate)
        if missing.any():
            estimate[missing] = self._nearest(known, strict=True)[missing]
        return estimate

    def _axis_estimate(self, grid: np.ndarray, *, strict: bool) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean over axes of linear interpolation between the nearest known nodes."""
        num = np.zeros(grid.shape)
        den = np.zeros(grid.shape)
        for axis in range(grid.ndim):
            est, gap = self._along(grid, axis, strict)
            ok = np.isfinite(est)
            w = np.where(ok, 1.0 / np.maximum(gap, 1e-12) ** 2, 0.0)
            num += np.where(ok, est, 0.0) * w
            den += w
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan), den

    def _along(self, grid: np.ndarray, axis: int, strict: bool) -> tuple[np.ndarray, np.ndarray]:
        """Estimate and log-gap from the bracketing known nodes along `axis` (class-aware on 0)."""
        est, gap = _bracket(grid, self._logv[axis], axis, strict)
        if axis == 0 and self._subsets:
            for idx in self._subsets.values():
                sub = np.take(grid, idx, axis=0)
                e_sub, g_sub = _bracket(sub, self._logv[0][idx], 0, strict)
                ok = np.isfinite(e_sub)
                cur_e = np.take(est, idx, axis=0)
                cur_g = np.take(gap, idx, axis=0)
                est[idx] = np.where(ok, e_sub, cur_e)
                gap[idx] = np.where(ok, g_sub, cur_g)
        return est, gap

    def _nearest(self, grid: np.ndarray, *, strict: bool) -> np.ndarray:
        """Value of the nearest known node along any single axis (log distance), NaN if none."""
        best = np.full(grid.shape, np.nan)
        best_d = np.full(grid.shape, np.inf)
        for axis in range(grid.ndim):
            for value, dist in _neighbours(grid, self._logv[axis], axis, strict):
                better = np.isfinite(value) & (dist < best_d)
                best = np.where(better, value, best)
                best_d = np.where(better, dist, best_d)
        return best

    # -------------------------------------------------------------- queries
    def query(self, points: np.ndarray) -> np.ndarray:
        """Multilinear interpolation of `log e` at rows of shape values (clamped to the grid)."""
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        n, d = points.shape
        logp = np.log(np.maximum(points, 1e-300))
        idx_lo, idx_hi, frac = [], [], []
        for i in range(d):
            if i == 0 and self._subsets:
                lo_i, hi_i, f_i = self._locate_classes(points[:, 0], logp[:, 0])
            else:
                lo_i, hi_i, f_i = self._locate(self._logv[i], logp[:, i])
            idx_lo.append(lo_i)
            idx_hi.append(hi_i)
            frac.append(f_i)
        result = np.zeros(n)
        for corner in range(1 << d):
            weight = np.ones(n)
            index = []
            for i in range(d):
                if corner >> i & 1:
                    weight = weight * frac[i]
                    index.append(idx_hi[i])
                else:
                    weight = weight * (1.0 - frac[i])
                    index.append(idx_lo[i])
            result += weight * self.log_eff[tuple(index)]
        return result

    @staticmethod
    def _locate(logv: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bracketing node indices and the fraction between them (clamped at the edges)."""
        if len(logv) == 1:
            zeros = np.zeros(len(x), dtype=np.int64)
            return zeros, zeros, np.zeros(len(x))
        xc = np.clip(x, logv[0], logv[-1])
        hi = np.clip(np.searchsorted(logv, xc, side="right"), 1, len(logv) - 1)
        lo = hi - 1
        frac = (xc - logv[lo]) / (logv[hi] - logv[lo])
        return lo, hi, np.clip(frac, 0.0, 1.0)

    def _locate_classes(self, m: np.ndarray, logm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like `_locate` on axis 0, within the query's alignment class where it covers the query."""
        lo, hi, frac = self._locate(self._logv[0], logm)
        cls = _align_class(m, self.align)
        for a, idx in self._subsets.items():
            sel = (cls == a) & (m >= self.values[0][idx[0]]) & (m <= self.values[0][idx[-1]])
            if not sel.any():
                continue
            if len(idx) == 1:
                lo[sel] = hi[sel] = idx[0]
                frac[sel] = 0.0
                continue
            l_s, h_s, f_s = self._locate(self._logv[0][idx], logm[sel])
            lo[sel], hi[sel], frac[sel] = idx[l_s], idx[h_s], f_s
        return lo, hi, frac

    # -------------------------------------------------------------- transforms
    def mapped(self, func: Callable[[np.ndarray], np.ndarray]) -> Grid:
        """A copy with `log_eff` replaced by func(log_eff)."""
        return Grid(self.axes, self.values, func(self.log_eff), self.measured.copy(), self.align)


def _bracket(grid: np.ndarray, logv: np.ndarray, axis: int, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation (in log shape) between the nearest known nodes below and above."""
    (v_lo, d_lo), (v_hi, d_hi) = _neighbours(grid, logv, axis, strict)
    gap = d_lo + d_hi
    with np.errstate(invalid="ignore", divide="ignore"):
        est = v_lo + (v_hi - v_lo) * (d_lo / gap)
    return np.where(np.isfinite(v_lo) & np.isfinite(v_hi), est, np.nan), gap


def _neighbours(grid: np.ndarray, logv: np.ndarray, axis: int, strict: bool):
    """(value, log distance) of the nearest known node below and above each node along `axis`.

    With `strict` the node itself does not count (leave-one-out); otherwise a known node is its own
    neighbour at distance 0 on both sides.
    """
    n = grid.shape[axis]
    known = np.isfinite(grid)
    shape = [1] * grid.ndim
    shape[axis] = n
    pos = np.arange(n).reshape(shape)
    below = np.maximum.accumulate(np.where(known, pos, -1), axis=axis)
    above = np.flip(np.minimum.accumulate(np.flip(np.where(known, pos, n), axis=axis), axis=axis), axis=axis)
    if strict:
        below = np.concatenate([np.full_like(np.take(below, [0], axis=axis), -1),
                                np.take(below, np.arange(n - 1), axis=axis)], axis=axis)
        above = np.concatenate([np.take(above, np.arange(1, n), axis=axis),
                                np.full_like(np.take(above, [0], axis=axis), n)], axis=axis)
    out = []
    here = logv.reshape(shape)
    for idx in (below, above):
        valid = (idx >= 0) & (idx < n)
        safe = np.clip(idx, 0, n - 1)
        value = np.where(valid, np.take_along_axis(grid, safe, axis=axis), np.nan)
        dist = np.where(valid, np.abs(logv[safe] - here), np.inf)
        out.append((value, dist))
    return out


# ---------------------------------------------------------------------------------------- per kind
@dataclass
class KernelFit:
    """Fitted efficiency of one kernel kind: one `Grid` per categorical group.

    Attributes:
        kind: kernel kind (see `kernel_tables.KERNEL_KINDS`).
        group_columns: the categorical columns that key `groups`.
        groups: group key (tuple of str, in `group_columns` order) -> grid over `SHAPE_COLUMNS[kind]`
            (allreduce: axis message_size, grouped by num_gpus).
        points: measured rows used for the fit.
    """

    kind: str
    group_columns: tuple[str, ...]
    groups: dict[tuple[str, ...], Grid]
    points: int = 0

    def axes(self) -> tuple[str, ...]:
        """Shape columns of this kind's grids."""
        return next(iter(self.groups.values())).axes

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

    def log_efficiency(self, shape: Mapping[str, np.ndarray], category: Mapping[str, object]) -> np.ndarray:
        """ln(efficiency) at the given shapes (arrays of equal length) for one category."""
        grid = self.group_for(category)
        cols = [np.asarray(shape[a], dtype=np.float64) for a in grid.axes]
        return grid.query(np.column_stack(cols))

    def seconds(self, device: DeviceSpec, shape: Mapping[str, np.ndarray],
                category: Mapping[str, object]) -> np.ndarray:
        """Predicted kernel seconds: ideal roofline seconds / fitted efficiency."""
        full = {**shape}
        if self.kind == "allreduce":
            full["num_gpus"] = np.broadcast_to(float(category["num_gpus"]), np.shape(shape["message_size"]))
        ideal = ideal_seconds(self.kind, device, full, category)
        return ideal / np.exp(self.log_efficiency(shape, category))


def group_keys(table: KernelTable) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The categorical columns that split `table` into grids, and each row's key (as strings)."""
    if table.kind == "allreduce":
        cols: tuple[str, ...] = ("num_gpus",)
        values = [table.shape["num_gpus"]]
    else:
        cols = CATEGORY_COLUMNS[table.kind] + tuple(OPTIONAL_COLUMNS.get(table.kind, {}))
        values = [table.category[c] for c in cols]
    keys = [tuple(str(v) for v in row) for row in zip(*values, strict=True)]
    return cols, keys


def _axes(kind: str) -> tuple[str, ...]:
    return ("message_size",) if kind == "allreduce" else SHAPE_COLUMNS[kind]


def per_group(table: KernelTable,
              value: Callable[[dict[str, str], dict[str, np.ndarray], np.ndarray], np.ndarray]) -> np.ndarray:
    """One value per row of `table`, computed a category group at a time:
    `value(category, shape columns of the group's rows, row mask)`."""
    cols, keys = group_keys(table)
    out = np.empty(len(table))
    joined = np.array(["\x1f".join(k) for k in keys])
    for key in np.unique(joined):
        sel = joined == key
        category = dict(zip(cols, key.split("\x1f"), strict=True))
        out[sel] = value(category, {c: v[sel] for c, v in table.shape.items()}, sel)
    return out


def observed_log_efficiency(table: KernelTable, device: DeviceSpec) -> np.ndarray:
    """ln(ideal / measured) of every row of `table` on `device`."""
    return per_group(table, lambda category, shape, sel: np.log(
        ideal_seconds(table.kind, device, shape, category) / table.latency_s[sel]))


def fit_table(table: KernelTable, device: DeviceSpec) -> KernelFit:
    """Fit one kernel kind: a filled log-efficiency grid per categorical group."""
    cols, keys = group_keys(table)
    log_e = observed_log_efficiency(table, device)
    axes = _axes(table.kind)
    keys_arr = np.array(["\x1f".join(k) for k in keys])
    groups: dict[tuple[str, ...], Grid] = {}
    for key in sorted(set(keys_arr.tolist())):
        sel = keys_arr == key
        points = np.column_stack([table.shape[a][sel] for a in axes]).astype(np.float64)
        align = GEMM_ALIGN if table.kind == "gemm" else ()
        groups[tuple(key.split("\x1f"))] = Grid.build(axes, points, log_e[sel], align)
    return KernelFit(table.kind, cols, groups, len(table))


def fit_tables(tables: Mapping[str, KernelTable], device: DeviceSpec) -> dict[str, KernelFit]:
    """Fit every table (by kind) for `device`."""
    return {kind: fit_table(table, device) for kind, table in tables.items()}


def leave_one_out(table: KernelTable, device: DeviceSpec) -> np.ndarray:
    """Predicted seconds of every row from the fit without that row (see module docstring).

    Rows measured more than once at the same shape are averaged first, so a duplicate does not
    predict itself; the returned prediction is per row.
    """
    cols, keys = group_keys(table)
    axes = _axes(table.kind)
    log_e = observed_log_efficiency(table, device)
    keys_arr = np.array(["\x1f".join(k) for k in keys])
    pred = np.full(len(table), np.nan)
    for key in sorted(set(keys_arr.tolist())):
        sel = np.flatnonzero(keys_arr == key)
        points = np.column_stack([table.shape[a][sel] for a in axes]).astype(np.float64)
        grid = Grid.build(axes, points, log_e[sel], GEMM_ALIGN if table.kind == "gemm" else ())
        loo = grid.leave_one_out()
        index = tuple(np.searchsorted(grid.values[i], points[:, i]) for i in range(len(axes)))
        ideal = ideal_seconds(table.kind, device, {**{a: table.shape[a][sel] for a in table.shape}},
                              dict(zip(cols, key.split("\x1f"), strict=True)))
        pred[sel] = ideal / np.exp(loo[index])
    return pred


def datasheet_seconds(table: KernelTable, device: DeviceSpec, eff: Efficiency | None = None) -> np.ndarray:
    """Seconds of every row by the datasheet roofline with default efficiencies (`perf.kernels`):
    the baseline a calibration is measured against."""
    s, c = table.shape, table.category
    if table.kind == "gemm":
        return np.array([gemm_seconds(device, m, n, k, GEMM_DTYPES.get(d, "bf16"), eff) for m, n, k, d in
                         zip(s["m"], s["n"], s["k"], c["gemm_dtype"], strict=True)])
    if table.kind == "allreduce":
        return np.array([allreduce_seconds(device, g, size, eff) for g, size in
                         zip(s["num_gpus"], s["message_size"], strict=True)])
    context = table.kind == "context_attention"
    cost = context_attention_cost if context else generation_attention_cost
    length = s["isl"] if context else s["step"]
    rows = zip(s["batch_size"], length, s["num_heads"], s["num_key_value_heads"], s["head_dim"],
               c["kv_cache_dtype"], c["window_size"], strict=True)
    return np.array([attention_seconds(device, *cost(int(b), int(n), int(h), int(kv), int(d),
                                                     GEMM_DTYPES.get(str(dt), str(dt)), int(w)), eff)
                     for b, n, h, kv, d, dt, w in rows])


def ape_summary(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Median, p90 and mean absolute percentage error (fractions) and the point count."""
    ape = np.abs(predicted - measured) / measured
    ape = ape[np.isfinite(ape)]
    if not len(ape):
        return {"median": math.nan, "p90": math.nan, "mean": math.nan, "points": 0}
    return {"median": float(np.median(ape)), "p90": float(np.percentile(ape, 90)),
            "mean": float(np.mean(ape)), "points": int(len(ape))}


def measured_devices(tables: Iterable[KernelTable]) -> set[str]:
    """The device strings recorded in `tables` (empty strings dropped)."""
    return {t.device for t in tables if t.device}


def check_device(tables: Mapping[str, KernelTable], device: DeviceSpec) -> None:
    """UserError when a table records a device that resolves to another catalog entry."""
    from paretoserve.catalog.device import load_device

    for table in tables.values():
        if not table.device or table.device == device.display_name:
            continue
        try:
            recorded = load_device(table.device).name
        except UserError:
            continue
        if recorded != device.name:
            raise UserError(f"this table was measured on {table.device} ({recorded}), not {device.name}; "
                            f"pass --device {recorded}", file=table.source, field="device")
