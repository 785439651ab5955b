"""Few-sample transfer of kernel efficiencies to a new device (HELP's idea, kept small).

A profiled reference device (H100) has dense efficiency grids per kernel kind (`kernel_fit`). A new
device (A100) has its datasheet and a handful of measured kernels. Its efficiency at any shape is
taken from the reference curve through a monotone power map:

    ln e_new(shape) = a_kind + b · ln e_ref(shape)

with one intercept `a_kind` per kernel kind (GEMM, context attention, generation attention) and
one slope `b` shared by all kinds (b < 1 compresses the curve: small, launch-bound kernels lose
less on a slower device than large ones). The intercepts are a common one plus per-kind offsets.
With ≤ 10 points the fit is a Huber-weighted least squares on ln e_new − ln e_ref (δ = 0.2) with
ridge penalties pulling the per-kind offsets towards 0 (λ = 3) and `b` towards 1 (λ = 1): with three
or four points per kind, a kind's own intercept is noisier (≈ ±0.3 in ln e per point, the shape
idiosyncrasies of the two devices' kernels) than the true differences between kinds. A kind without
points gets the common intercept. Times then follow as ideal_new(shape) / e_new(shape) with the new
device's datasheet peaks. (λ and δ were chosen on the A100 tables against the H100 ones — the only
device pair available — by the spread of the held-out error over 30 seeds of the point choice.)

Point choice (`select_points`) is deterministic: the points are spread over the kernel kinds (GEMM
gets the remainder: 10 → 4 GEMM, 3 context, 3 generation), and within a kind the rows are sorted by
the reference efficiency at their shape, cut into as many equal strata as points, and one row per
stratum is drawn with `numpy.random.default_rng(seed)` — so the points span the efficiency range,
which is what identifies the slope.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from paretoserve.calibrate.kernel_fit import observed_log_efficiency, per_group
from paretoserve.calibrate.kernel_tables import KernelTable
from paretoserve.catalog.device import DeviceSpec
from paretoserve.errors import UserError
from paretoserve.perf.fitted import Grid, KernelFit

#: Kernel kinds that take part in the transfer (all-reduce keeps the reference link efficiency).
TRANSFER_KINDS: tuple[str, ...] = ("gemm", "context_attention", "generation_attention")
HUBER_DELTA = 0.2
SLOPE_RIDGE = 1.0
OFFSET_RIDGE = 3.0


@dataclass(frozen=True)
class TransferMap:
    """ln e_new = intercepts[kind] + slope · ln e_ref.

    Attributes:
        slope: shared slope b.
        intercepts: kind -> a_kind.
        points: kind -> number of measured points used.
        residual: kind -> median |ln e_new − map| at the points used (how well the map fits them).
    """

    slope: float
    intercepts: dict[str, float]
    points: dict[str, int] = field(default_factory=dict)
    residual: dict[str, float] = field(default_factory=dict)

    def apply(self, kind: str, log_e_ref: np.ndarray) -> np.ndarray:
        """Mapped ln e for `kind` (all-reduce and unknown kinds are returned unchanged)."""
        if kind not in self.intercepts:
            return log_e_ref
        return self.intercepts[kind] + self.slope * log_e_ref

    def to_dict(self) -> dict[str, object]:
        """Plain dict for the profile file."""
        return {"slope": self.slope, "intercepts": dict(self.intercepts), "points": dict(self.points),
                "residual": dict(self.residual)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> TransferMap:
        """Inverse of `to_dict`."""
        return cls(float(data["slope"]), {k: float(v) for k, v in dict(data["intercepts"]).items()},
                   {k: int(v) for k, v in dict(data.get("points", {})).items()},
                   {k: float(v) for k, v in dict(data.get("residual", {})).items()})


def reference_log_efficiency(fit: KernelFit, table: KernelTable) -> np.ndarray:
    """ln e of the reference fit at every row's shape and category of `table`."""
    return per_group(table, lambda category, shape, _sel: fit.log_efficiency(shape, category))


def allocate(kinds: list[str], total: int) -> dict[str, int]:
    """Points per kind: an equal share each, GEMM (else the first kind) gets the remainder."""
    if not kinds:
        return {}
    share, extra = divmod(total, len(kinds))
    first = "gemm" if "gemm" in kinds else kinds[0]
    return {k: share + (extra if k == first else 0) for k in kinds}


def select_points(tables: Mapping[str, KernelTable], reference: Mapping[str, KernelFit], *,
                  total: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Row indices (per kind) of the ≤ `total` measured points to fit on (see module docstring)."""
    kinds = [k for k in TRANSFER_KINDS if k in tables and k in reference]
    if not kinds:
        raise UserError("no kernel kind measured on both devices (need gemm or attention tables)")
    rng = np.random.default_rng(seed)
    chosen: dict[str, np.ndarray] = {}
    for kind, count in allocate(kinds, total).items():
        order = np.argsort(reference_log_efficiency(reference[kind], tables[kind]), kind="stable")
        strata = [s for s in np.array_split(order, min(count, len(order))) if len(s)]
        chosen[kind] = np.array(sorted(int(rng.choice(s)) for s in strata), dtype=np.int64)
    return chosen


def fit_transfer(reference: Mapping[str, KernelFit], tables: Mapping[str, KernelTable],
                 device: DeviceSpec, points: Mapping[str, np.ndarray]) -> TransferMap:
    """Fit the map on the rows `points` (per kind) of the new device's `tables`."""
    kinds = [k for k in TRANSFER_KINDS if k in points and len(points[k])]
    if not kinds:
        raise UserError("no measured points to transfer from")
    rows, ys, xs = [], [], []
    nk = len(kinds)
    for j, kind in enumerate(kinds):
        sub = tables[kind].subset(np.isin(np.arange(len(tables[kind])), points[kind]))
        ref = reference_log_efficiency(reference[kind], sub)
        new = observed_log_efficiency(sub, device)
        for r, n in zip(ref, new, strict=True):
            row = np.zeros(nk + 2)  # [common intercept, per-kind offsets..., slope − 1]
            row[0] = 1.0
            row[1 + j] = 1.0
            row[-1] = r
            rows.append(row)
            ys.append(n - r)
            xs.append(kind)
    design, target = np.array(rows), np.array(ys)
    ridge = np.array([0.0] + [OFFSET_RIDGE] * nk + [SLOPE_RIDGE])
    weights = np.ones(len(target))
    coef = np.zeros(nk + 2)
    for _ in range(50):
        dw = design * weights[:, None]
        coef_new = np.linalg.solve(dw.T @ dw + np.diag(ridge), dw.T @ (target * weights))
        residual = np.abs(target - design @ coef_new)
        weights = np.sqrt(np.where(residual <= HUBER_DELTA, 1.0, HUBER_DELTA / np.maximum(residual, 1e-12)))
        done = np.allclose(coef_new, coef, atol=1e-10)
        coef = coef_new
        if done:
            break
    intercepts = {k: float(coef[0] + coef[1 + j]) for j, k in enumerate(kinds)}
    for kind in TRANSFER_KINDS:
        if kind in reference and kind not in intercepts:
            intercepts[kind] = float(coef[0])
    residual = np.abs(target - design @ coef)
    kinds_arr = np.array(xs)
    return TransferMap(1.0 + float(coef[-1]), intercepts,
                       {k: int(len(points[k])) for k in kinds},
                       {k: float(np.median(residual[kinds_arr == k])) for k in kinds})


def transfer_fits(reference: Mapping[str, KernelFit], mapping: TransferMap) -> dict[str, KernelFit]:
    """The reference fits with every grid's ln e mapped (no node counts as measured any more)."""
    out: dict[str, KernelFit] = {}
    for kind, fit in reference.items():
        groups: dict[tuple[str, ...], Grid] = {}
        for key, grid in fit.groups.items():
            moved = grid.mapped(lambda le, kind=kind: mapping.apply(kind, le))
            moved.measured = np.zeros_like(grid.measured)
            groups[key] = moved
        out[kind] = KernelFit(kind, fit.group_columns, groups, 0)
    return out
