"""Calibration: fit the latency model to measurements (DESIGN §2, issue 5).

- `kernel_tables` reads measured kernel tables (GEMM, attention, all-reduce);
- `kernel_fit` turns them into per-kernel efficiency grids (interpolated in log-shape space);
- `transfer` moves a profiled device's curves to a new device from a few measured points;
- the fits are stored in profile files (`paretoserve.perf.profile`, re-exported here), which
  `paretoserve.perf.calibrated.load_step_model` turns into a `Calibrated` step-time model.

The functions here are the library entry points the CLI calls.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from paretoserve.calibrate.kernel_fit import (
    ape_summary,
    check_device,
    datasheet_seconds,
    fit_tables,
    leave_one_out,
    per_group,
)
from paretoserve.calibrate.kernel_tables import KernelTable, find_kernel_tables, load_kernel_table
from paretoserve.calibrate.mla_fit import find_mla_tables, fit_mla, read_mla_terms
from paretoserve.calibrate.transfer import (
    TRANSFER_KINDS,
    TransferMap,
    fit_transfer,
    reference_log_efficiency,
    select_points,
    transfer_fits,
)
from paretoserve.catalog.device import DeviceSpec, load_device
from paretoserve.errors import UserError
from paretoserve.perf.fitted import KernelFit, ideal_seconds
from paretoserve.perf.profile import Profile, load_profile, save_profile

__all__ = [
    "KernelFit", "KernelTable", "Profile", "TransferMap", "calibrate_kernels", "find_kernel_tables",
    "fit_quality", "load_kernel_table", "load_profile", "save_profile", "transfer_profile",
]


def _device(device: str | DeviceSpec | None, tables: Mapping[str, KernelTable]) -> DeviceSpec:
    """`device`, or the catalog device the tables record when it is None."""
    if device is not None:
        return load_device(device) if isinstance(device, str) else device
    recorded = sorted({t.device for t in tables.values() if t.device})
    for name in recorded:
        try:
            return load_device(name)
        except UserError:
            continue
    what = f"records '{recorded[0]}', not a catalog device" if recorded else "records no device"
    raise UserError(f"the kernel tables' device column {what}; pass --device (a catalog name or a "
                    "device YAML)")


def _engine(tables: Mapping[str, KernelTable]) -> tuple[str, str]:
    for kind in ("gemm", "context_attention", "generation_attention"):
        if kind in tables and tables[kind].framework:
            return tables[kind].framework, tables[kind].version
    return "", ""


def fit_quality(tables: Mapping[str, KernelTable], device: DeviceSpec) -> dict[str, dict[str, float]]:
    """Leave-one-out error of the fit per kernel kind, and the datasheet roofline's (fractions)."""
    out = {}
    for kind, table in tables.items():
        s = ape_summary(leave_one_out(table, device), table.latency_s)
        b = ape_summary(datasheet_seconds(table, device), table.latency_s)
        out[kind] = {"points": s["points"], "loo_median": round(s["median"], 5),
                     "loo_p90": round(s["p90"], 5), "datasheet_median": round(b["median"], 5),
                     "datasheet_p90": round(b["p90"], 5)}
    return out


def calibrate_kernels(directory: str | os.PathLike[str], device: str | DeviceSpec | None = None, *,
                      version: str | None = None, framework: str = "vllm",
                      quality: bool = True) -> Profile:
    """Fit a "kernels" profile from the kernel tables under `directory` (see `find_kernel_tables`).

    With `quality`, leave-one-out errors per kernel kind (and the datasheet roofline's error, the
    baseline) are stored in `Profile.fit`. `device` defaults to the one the tables record; a table
    recording a different device than `device` is a `UserError`. Where the folder has MLA module
    tables (`mla_fit.find_mla_tables`), the MLA constants of each phase are fitted too
    (`Profile.mla`; their quality under `fit` as "mla_context" / "mla_generation").
    """

    tables = find_kernel_tables(directory, framework=framework, version=version)
    dev = _device(device, tables)
    check_device(tables, dev)
    engine, engine_version = _engine(tables)
    fits = fit_tables(tables, dev)
    mla_paths = find_mla_tables(directory, framework=framework, version=version)
    mla = {phase: fit_mla(read_mla_terms(path, dev, phase), phase) for phase, path in mla_paths.items()}
    sources = ", ".join([*(str(Path(t.source)) for t in tables.values()), *map(str, mla_paths.values())])
    quality_rows = {**fit_quality(tables, dev), **{f"mla_{phase}": f.quality() for phase, f in mla.items()}}
    return Profile(device=dev.name, kind="kernels", engine=engine, engine_version=engine_version,
                   source=sources, kernels=fits, mla={phase: f.constants for phase, f in mla.items()},
                   fit=quality_rows if quality else {})


def transfer_profile(reference: Profile, directory: str | os.PathLike[str],
                     device: str | DeviceSpec | None = None, *,
                     points: int = 10, seed: int = 0, version: str | None = None,
                     framework: str = "vllm") -> Profile:
    """A "transfer" profile for `device` from a reference profile and ≤ `points` of its measurements.

    The measured tables under `directory` supply the points (chosen by `transfer.select_points`);
    all their other rows measure the result: `Profile.fit[kind]` holds the held-out median and p90
    error of the transfer and, as the baseline, of the datasheet roofline with default efficiencies.
    """

    tables = find_kernel_tables(directory, framework=framework, version=version)
    dev = _device(device, tables)
    if reference.device == dev.name:
        raise UserError(f"the reference profile is already for {dev.name}; transfer needs another device's")
    if not reference.kernels:
        raise UserError("the reference profile has no kernel fits to transfer (make one with "
                        "`paretoserve calibrate --kernels`)")
    check_device(tables, dev)
    chosen = select_points(tables, reference.kernels, total=points, seed=seed)
    mapping = fit_transfer(reference.kernels, tables, dev, chosen)
    fits = transfer_fits(reference.kernels, mapping)
    quality: dict[str, dict[str, float]] = {}
    for kind in TRANSFER_KINDS:
        if kind not in tables or kind not in fits:
            continue
        table = tables[kind]
        held = np.ones(len(table), dtype=bool)
        held[chosen.get(kind, np.zeros(0, dtype=np.int64))] = False
        sub = table.subset(held)
        pred = predict_seconds(fits[kind], sub, dev)
        base = datasheet_seconds(sub, dev)
        s, b = ape_summary(pred, sub.latency_s), ape_summary(base, sub.latency_s)
        quality[kind] = {"points_used": int(len(chosen.get(kind, ()))), "heldout_points": s["points"],
                         "heldout_median": round(s["median"], 5), "heldout_p90": round(s["p90"], 5),
                         "datasheet_median": round(b["median"], 5), "datasheet_p90": round(b["p90"], 5)}
    engine, engine_version = _engine(tables)
    ref_engine = f"{reference.engine} {reference.engine_version}".strip()
    info = {"reference": reference.device, "reference_engine": ref_engine, "seed": seed, **mapping.to_dict(),
            "rows": {k: [int(i) for i in v] for k, v in chosen.items()}}
    return Profile(device=dev.name, kind="transfer", engine=engine or reference.engine,
                   engine_version=engine_version or reference.engine_version,
                   source=f"{reference.device} profile + {sum(len(v) for v in chosen.values())} measured "
                          f"points from {directory}", kernels=fits, fit=quality, transfer=info)


def predict_seconds(fit: KernelFit, table: KernelTable, device: DeviceSpec) -> np.ndarray:
    """Fitted seconds of every row of `table`."""
    ideal = per_group(table, lambda category, shape, _sel: ideal_seconds(table.kind, device, shape, category))
    return ideal / np.exp(reference_log_efficiency(fit, table))
