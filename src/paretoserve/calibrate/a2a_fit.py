"""Fit the all-to-all model (`paretoserve.perf.alltoall`) to DeepEP tables (engine_facts.md §2).

Low-latency table: node_num, hidden_size, num_token (per rank), num_topk, num_experts,
dispatch_avg_t_us, combine_avg_t_us. Normal table: the same shape columns with dispatch_sms,
dispatch_transmit_us, dispatch_notify_us and the combine equivalents; each shape's fastest SM
setting is kept (phase time = transmit + notify, as AIC's SDK reads it). EP = node_num × 8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from paretoserve.errors import UserError
from paretoserve.perf.alltoall import (
    A2aPhase,
    combine_bytes_per_selection,
    dispatch_bytes_per_selection,
    fit_phase,
    remote_fraction,
)

_SHAPE = ("node_num", "hidden_size", "num_token", "num_topk", "num_experts")


def read_phase_rows(path: str | Path, family: str, phase: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(remote bytes, seconds, shape key) of every measured shape of one family ("ll"/"normal") and
    phase ("dispatch"/"combine"); UserError for a missing file or column."""
    try:
        table = pq.read_table(path).to_pydict()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read DeepEP table ({exc})", file=str(path)) from None
    cols = [f"{phase}_avg_t_us"] if family == "ll" else [f"{phase}_transmit_us", f"{phase}_notify_us"]
    missing = [c for c in (*_SHAPE, *cols) if c not in table]
    if missing:
        raise UserError(f"not a DeepEP {family} table: missing column(s) {', '.join(missing)}", file=str(path))
    best: dict[tuple[int, ...], float] = {}
    for i in range(len(table["hidden_size"])):
        key = tuple(int(table[c][i]) for c in _SHAPE)
        us = sum(float(table[c][i]) for c in cols)
        best[key] = min(us, best.get(key, np.inf))
    keys = np.array(list(best), dtype=float)
    nodes, hidden, tokens, topk = keys[:, 0], keys[:, 1], keys[:, 2], keys[:, 3]
    per_sel = (dispatch_bytes_per_selection(hidden) if phase == "dispatch" else combine_bytes_per_selection(hidden))
    ep = (nodes * 8).astype(int)
    remote = tokens * topk * per_sel * np.array([remote_fraction(int(e)) for e in ep])
    return remote, np.array(list(best.values())) * 1e-6, keys


def fit_table(path: str | Path, family: str, phase: str) -> A2aPhase:
    """The fitted phase of one table."""
    remote, seconds, _ = read_phase_rows(path, family, phase)
    return fit_phase(remote, seconds)


def leave_one_out(path: str | Path, family: str, phase: str) -> np.ndarray:
    """|relative error| of every shape predicted by the fit on all the others."""
    remote, seconds, _ = read_phase_rows(path, family, phase)
    errors = np.empty(len(seconds))
    for i in range(len(seconds)):
        keep = np.arange(len(seconds)) != i
        errors[i] = abs(fit_phase(remote[keep], seconds[keep]).seconds(remote[i]) / seconds[i] - 1.0)
    return errors
