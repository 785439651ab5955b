"""Per-kernel efficiency fitted from measured tables, as a function of shape.

For every measured kernel call the **efficiency** is e = ideal / measured, with `ideal_seconds` the
roofline time at the device's datasheet peaks and no fixed latency (for all-reduce: ring bytes over
the intra-node link). Small kernels, dominated by launch latency, have e ≪ 1; large GEMMs approach
the fraction of peak their tiles reach.

`ln e` is stored on a rectilinear grid in log-shape space (`paretoserve.perf.fitted.Grid`, one per
categorical group: GEMM dtype; attention KV dtype and window; all-reduce GPU count). Grid nodes that
were not measured (and impossible ones such as more KV heads than query heads) are **filled** from
their neighbours: along each axis, linear interpolation (in log shape) between the nearest known
nodes below and above; the estimates of the axes that bracket the node are averaged with weights
1/gap² (the closer the neighbours, the more it counts); repeated until nothing more can be
bracketed; what is left takes the efficiency of its nearest known node.

Queries (multilinear interpolation, clamped at the edges) are `Grid.query`. Leave-one-out
predictions (`leave_one_out`) apply the fill rule to each measured node from its other measured
neighbours — what the fit would predict had that point not been measured.

GEMM tiles make the token dimension `m` non-smooth: on H100, m = 4096 and m = 4097 differ by up to
40% (padding to the next tile), and block-scaled FP8 is ~25% faster when m is a multiple of 4. The m
axis therefore interpolates within **alignment classes** (m divisible by 16, by 4, neither) when the
class has measurements on both sides, and across all m otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from paretoserve.calibrate.kernel_tables import CATEGORY_COLUMNS, SHAPE_COLUMNS, KernelTable
from paretoserve.catalog.device import DeviceSpec
from paretoserve.errors import UserError
from paretoserve.perf import comm
from paretoserve.perf.fitted import GEMM_DTYPES, OPTIONAL_COLUMNS, Grid, KernelFit, class_nodes, ideal_seconds
from paretoserve.perf.kernels import (
    attention_seconds,
    context_attention_cost,
    gemm_seconds,
    generation_attention_cost,
)
from paretoserve.perf.roofline import Efficiency

#: Alignment classes of the GEMM m axis (largest first); m in none of them is class 1.
GEMM_ALIGN: tuple[int, ...] = (16, 4)


# ---------------------------------------------------------------------------------------- the grid
def build_grid(axes: tuple[str, ...], points: np.ndarray, log_eff: np.ndarray,
               align: tuple[int, ...] = ()) -> Grid:
    """Grid through measured `points` (rows of shape values) with `log_eff` each; duplicates are
    averaged (in log), the rest of the grid is filled (see the module docstring)."""
    values = tuple(np.unique(points[:, i]).astype(np.float64) for i in range(points.shape[1]))
    index = tuple(np.searchsorted(values[i], points[:, i]) for i in range(points.shape[1]))
    shape = tuple(len(v) for v in values)
    total = np.zeros(shape)
    count = np.zeros(shape)
    np.add.at(total, index, log_eff)
    np.add.at(count, index, 1.0)
    known = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    nodes = _Nodes(tuple(np.log(v) for v in values), class_nodes(values[0], align))
    return Grid(axes, values, nodes.fill(known), count > 0, align)


def grid_leave_one_out(grid: Grid) -> np.ndarray:
    """For every node, the fill rule's estimate from the other *measured* nodes (NaN if none)."""
    nodes = _Nodes(grid.log_values, grid.classes)
    known = np.where(grid.measured, grid.log_eff, np.nan)
    estimate = nodes.axis_estimate(known, strict=True)
    missing = np.isnan(estimate)
    if missing.any():
        estimate[missing] = nodes.nearest(known, strict=True)[missing]
    return estimate


@dataclass(frozen=True)
class _Nodes:
    """The fill rule over a grid's nodes: ln of each axis' values and the alignment classes of axis 0."""

    logv: tuple[np.ndarray, ...]
    classes: dict[int, np.ndarray]

    def fill(self, grid: np.ndarray) -> np.ndarray:
        """`grid` with every NaN node filled from its known neighbours."""
        grid = grid.copy()
        while np.isnan(grid).any():
            estimate = self.axis_estimate(grid, strict=False)
            todo = np.isnan(grid) & np.isfinite(estimate)
            if todo.any():
                grid[todo] = estimate[todo]
                continue
            nearest = self.nearest(grid, strict=False)
            todo = np.isnan(grid) & np.isfinite(nearest)
            if not todo.any():  # pragma: no cover - a grid built from points always has one
                break
            grid[todo] = nearest[todo]
        return grid

    def axis_estimate(self, grid: np.ndarray, *, strict: bool) -> np.ndarray:
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
            return np.where(den > 0, num / den, np.nan)

    def _along(self, grid: np.ndarray, axis: int, strict: bool) -> tuple[np.ndarray, np.ndarray]:
        """Estimate and log-gap from the bracketing known nodes along `axis` (class-aware on 0)."""
        est, gap = _bracket(grid, self.logv[axis], axis, strict)
        if axis == 0 and self.classes:
            for idx in self.classes.values():
                sub = np.take(grid, idx, axis=0)
                e_sub, g_sub = _bracket(sub, self.logv[0][idx], 0, strict)
                ok = np.isfinite(e_sub)
                cur_e = np.take(est, idx, axis=0)
                cur_g = np.take(gap, idx, axis=0)
                est[idx] = np.where(ok, e_sub, cur_e)
                gap[idx] = np.where(ok, g_sub, cur_g)
        return est, gap

    def nearest(self, grid: np.ndarray, *, strict: bool) -> np.ndarray:
        """Value of the nearest known node along any single axis (log distance), NaN if none."""
        best = np.full(grid.shape, np.nan)
        best_d = np.full(grid.shape, np.inf)
        for axis in range(grid.ndim):
            for value, dist in _neighbours(grid, self.logv[axis], axis, strict):
                better = np.isfinite(value) & (dist < best_d)
                best = np.where(better, value, best)
                best_d = np.where(better, dist, best_d)
        return best


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
        groups[tuple(key.split("\x1f"))] = build_grid(axes, points, log_e[sel], align)
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
        grid = build_grid(axes, points, log_e[sel], GEMM_ALIGN if table.kind == "gemm" else ())
        loo = grid_leave_one_out(grid)
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
    if table.kind == "allreduce":  # vLLM's dispatch for vLLM tables, NCCL's for NCCL tables
        engine = "vllm" if table.framework == "vllm" else "nccl"
        return np.array([comm.allreduce_seconds(device, int(g), float(size), engine=engine) for g, size in
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
