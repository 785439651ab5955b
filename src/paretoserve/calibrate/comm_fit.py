"""Fit the all-reduce algorithm constants of `paretoserve.perf.comm` to measured all-reduce tables.

Each row of a vLLM ``custom_allreduce_perf`` table (framework "vllm") is attributed to the algorithm vLLM's dispatch
runs for it (`comm.vllm_algorithm`), each row of an ``nccl_perf`` table to NCCL's
(`comm.nccl_algorithm`). Per algorithm the model is linear in (base, per_peer, 1/efficiency, ramp),
so the fit is a non-negative least squares on relative error (each row divided by its measured
time). Leave-one-out refits without each row in turn and predicts it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from paretoserve.calibrate.kernel_tables import KernelTable, load_kernel_table
from paretoserve.catalog.device import DeviceSpec
from paretoserve.perf import comm

#: The tables the shipped constants (`comm.ALGORITHMS`) are fitted on, relative to shared/data/kernels.
FIT_TABLES: tuple[str, ...] = ("h100_sxm/comm/vllm/0.24.0/custom_allreduce_perf.parquet",
                               "h100_sxm/comm/nccl/2.29.2/nccl_perf.parquet")


def load_fit_tables(kernels_root: str | Path, paths: tuple[str, ...] = FIT_TABLES) -> list[KernelTable]:
    """The all-reduce tables `paths` under `kernels_root` (message sizes in bytes once loaded)."""
    return [load_kernel_table(Path(kernels_root) / p, "allreduce") for p in paths]


def _rows(tables: list[KernelTable], device: DeviceSpec) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(algorithm, gpus, bytes, measured seconds) of every row of `tables`."""
    algorithms: list[str] = []
    gpus, sizes, seconds = [], [], []
    for table in tables:
        vllm = table.framework == "vllm"
        for g, size, t in zip(table.shape["num_gpus"], table.shape["message_size"], table.latency_s, strict=True):
            g = int(g)
            algorithms.append(comm.vllm_algorithm(device, g, float(size)) if vllm else comm.nccl_algorithm(device, g))
            gpus.append(g)
            sizes.append(float(size))
            seconds.append(float(t))
    return algorithms, np.array(gpus), np.array(sizes), np.array(seconds)


def _design(algorithm: str, gpus: np.ndarray, sizes: np.ndarray, bandwidth: float) -> np.ndarray:
    """Columns (1, g − 1, x, sqrt(x × 1 µs)) with x the transfer seconds at full bandwidth."""
    x = np.array([comm.traffic(algorithm, int(g)) for g in gpus]) * sizes / bandwidth
    return np.column_stack([np.ones(len(gpus)), gpus - 1.0, x, np.sqrt(x * 1e-6)])


def _solve(design: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    coef, _ = nnls(design / seconds[:, None], np.ones(len(seconds)))
    return coef


def _as_fit(coef: np.ndarray) -> comm.AlgorithmFit:
    base, per_peer, inv_eff, ramp = (float(c) for c in coef)
    return comm.AlgorithmFit(base, per_peer, 1.0 / inv_eff if inv_eff > 0 else math.inf, ramp)


def fit_algorithms(tables: list[KernelTable], device: DeviceSpec) -> dict[str, comm.AlgorithmFit]:
    """Constants per algorithm fitted on every row of `tables` measured on `device`."""
    algorithms, gpus, sizes, seconds = _rows(tables, device)
    names = np.array(algorithms)
    fits = {}
    for name in sorted(set(algorithms)):
        sel = names == name
        fits[name] = _as_fit(_solve(_design(name, gpus[sel], sizes[sel], device.intra_node_bandwidth), seconds[sel]))
    return fits


def leave_one_out(tables: list[KernelTable], device: DeviceSpec) -> np.ndarray:
    """Signed relative error of each row predicted by the constants fitted without it."""
    algorithms, gpus, sizes, seconds = _rows(tables, device)
    names = np.array(algorithms)
    errors = np.empty(len(seconds))
    for name in set(algorithms):
        idx = np.flatnonzero(names == name)
        design = _design(name, gpus[idx], sizes[idx], device.intra_node_bandwidth)
        for j, row in enumerate(idx):
            keep = np.arange(len(idx)) != j
            coef = _solve(design[keep], seconds[idx][keep])
            errors[row] = float(design[j] @ coef) / seconds[row] - 1.0
    return errors


def model_errors(tables: list[KernelTable], device: DeviceSpec,
                 fits: dict[str, comm.AlgorithmFit] | None = None) -> np.ndarray:
    """Signed relative error of each row by `comm.allreduce_seconds` (shipped constants by default),
    with the table's engine (vLLM dispatch for custom all-reduce tables, NCCL for NCCL tables)."""
    errors = []
    for table in tables:
        engine = "vllm" if table.framework == "vllm" else "nccl"
        for g, size, t in zip(table.shape["num_gpus"], table.shape["message_size"], table.latency_s, strict=True):
            pred = comm.allreduce_seconds(device, int(g), float(size), engine=engine, fits=fits)
            errors.append(pred / float(t) - 1.0)
    return np.array(errors)
