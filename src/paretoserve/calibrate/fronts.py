"""Measured vs predicted ranking of parallel layouts by throughput per GPU (issue 12, evidence 1).

The measured points (`paretoserve.calibrate.points`) hold concurrency sweeps of several parallel
layouts for one model, engine and lengths. Such a set is a *family*: the supported aggregated rows
sharing (model, engine, hardware, ISL, OSL, weight format) that span at least two layouts (attention
TP × PP × attention-DP × MoE-TP × EP, `Role.layout`). For every family:

- TPOT target: the median measured mean TPOT of the family's rows (so about half its points meet it);
  one number per family, used for the measured and the predicted side alike.
- Throughput of a point: output tokens per second per GPU of its closed loop. With C users, no think
  time, each request of OSL output tokens, a request's mean latency is TTFT + (OSL − 1) · TPOT
  (TPOT being the mean gap between the OSL − 1 tokens after the first), so by Little's law the loop
  completes C / (TTFT + (OSL − 1) · TPOT) requests/s and
      tokens/s/GPU = C · OSL / (TTFT + (OSL − 1) · TPOT) / GPUs,
  GPUs = TP × PP × attention-DP of the one instance (`ParallelLayout.devices`).
- A layout's figure: the best throughput among its points whose TPOT meets the target; 0 when none
  does (the layout cannot serve at that TPOT and ranks below every layout that can). Measured figures
  use the measured TTFT/TPOT, predicted ones the predicted TTFT/TPOT of the same rows
  (`point_replay.predict_point`): both the feasibility and the throughput.
- Agreement: Spearman's rank correlation (scipy.stats.spearmanr, ties averaged) between the
  measured and predicted figures over the layouts (None when either side has all layouts tied); and
  the recommended layout (highest predicted figure) checked against the measured best: its measured
  figure within 5% of the best measured one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from paretoserve.calibrate.point_replay import PointPrediction
from paretoserve.calibrate.points import PointDeployment
from paretoserve.catalog.model import load_model
from paretoserve.perf.layout import ParallelLayout

#: The recommended layout passes when its measured figure is at least this share of the best.
BEST_TOLERANCE = 0.05


@dataclass(frozen=True, order=True)
class FamilyKey:
    """What a family's rows share (module docstring)."""

    model_path: str
    backend: str
    hardware: str
    isl: int
    osl: int
    weight_dtype: str

    @property
    def label(self) -> str:
        """One line, e.g. "Qwen/Qwen3-32B vllm bf16 1024/1024"."""
        return f"{self.model_path} {self.backend} {self.weight_dtype} {self.isl}/{self.osl}"


@dataclass(frozen=True)
class LayoutFigure:
    """One layout of a family at the family's TPOT target.

    Attributes:
        label: e.g. "TP4", "TP4 EP4", "TP4 DP4 EP16".
        gpus: GPUs of the instance.
        points: rows of its concurrency sweep.
        measured, predicted: best output tokens/s/GPU among the points meeting the target
            (0.0: none does).
    """

    label: str
    gpus: int
    points: int
    measured: float
    predicted: float


@dataclass(frozen=True)
class FamilyFront:
    """A family's layouts ranked both ways (module docstring).

    Attributes:
        key: the family.
        tpot_target_s: the TPOT target in seconds.
        layouts: the layouts, largest measured figure first.
        spearman: rank correlation of predicted and measured figures (None: undefined, ties).
        recommended: label of the layout with the highest predicted figure (None: none meets the target).
        measured_best: label of the layout with the highest measured figure.
        best_gap: measured figure of the recommended layout / the best measured one − 1 (≤ 0).
    """

    key: FamilyKey
    tpot_target_s: float
    layouts: tuple[LayoutFigure, ...]
    spearman: float | None
    recommended: str | None
    measured_best: str
    best_gap: float

    @property
    def best_ok(self) -> bool:
        """The recommended layout is the measured best or within `BEST_TOLERANCE` of it."""
        return self.recommended is not None and self.best_gap >= -BEST_TOLERANCE


def tokens_per_s_per_gpu(concurrency: int, osl: int, ttft_s: float, tpot_s: float, gpus: int) -> float:
    """Output tokens/s per GPU of a closed loop of `concurrency` users (module docstring's formula)."""
    return concurrency * osl / (ttft_s + (osl - 1) * tpot_s) / gpus


def layout_of(point: PointDeployment) -> ParallelLayout:
    """The parallel layout of an aggregated point's one instance (MoE columns ignored for dense models)."""
    (role,) = point.roles
    assert point.model is not None
    return role.layout(load_model(point.model).is_moe)


def layout_label(layout: ParallelLayout) -> str:
    """"TP4", "TP2 PP2", "TP4 DP4 EP16", "TP4 MoE-TP2 EP2": the factors above 1 (TP always)."""
    parts = [f"TP{layout.tp}"]
    if layout.pp > 1:
        parts.append(f"PP{layout.pp}")
    if layout.attention_dp > 1:
        parts.append(f"DP{layout.attention_dp}")
    if layout.ep > 1:
        if layout.moe_tp_ways > 1:
            parts.append(f"MoE-TP{layout.moe_tp_ways}")
        parts.append(f"EP{layout.ep}")
    return " ".join(parts)


def family_key(point: PointDeployment) -> FamilyKey:
    """The family of a point."""
    return FamilyKey(point.model_path, point.backend, point.hardware or "", point.isl, point.osl,
                     point.weight_dtype)


def families(predictions: Iterable[PointPrediction]) -> dict[FamilyKey, dict[ParallelLayout, list[PointPrediction]]]:
    """Supported aggregated points grouped by family and layout; families with ≥ 2 layouts only."""
    grouped: dict[FamilyKey, dict[ParallelLayout, list[PointPrediction]]] = {}
    for p in predictions:
        if p.point.unsupported is not None or p.point.mode != "agg":
            continue
        grouped.setdefault(family_key(p.point), {}).setdefault(layout_of(p.point), []).append(p)
    return {k: v for k, v in sorted(grouped.items()) if len(v) >= 2}


def _best(samples: list[tuple[float, float]], target_s: float) -> float:
    """Largest throughput among (tpot, throughput) samples with tpot ≤ target (0.0 if none)."""
    return max((tput for tpot, tput in samples if tpot <= target_s), default=0.0)


def rank_agreement(measured: list[float], predicted: list[float]) -> float | None:
    """Spearman's rho of two equally long lists (None when either is constant)."""
    if len(set(measured)) < 2 or len(set(predicted)) < 2:
        return None
    rho = float(spearmanr(measured, predicted).statistic)
    return rho if math.isfinite(rho) else None


def family_front(key: FamilyKey, layouts: dict[ParallelLayout, list[PointPrediction]]) -> FamilyFront:
    """One family's figures, rank agreement and best-layout check (module docstring)."""
    target = float(np.median([p.point.measured_tpot_s for items in layouts.values() for p in items]))
    figures = []
    for layout, items in layouts.items():
        gpus = layout.devices
        measured = [(p.point.measured_tpot_s,
                     tokens_per_s_per_gpu(p.point.concurrency, p.point.osl, p.point.measured_ttft_s,
                                          p.point.measured_tpot_s, gpus)) for p in items]
        predicted = [(p.tpot_s, tokens_per_s_per_gpu(p.point.concurrency, p.point.osl, p.ttft_s, p.tpot_s, gpus))
                     for p in items if p.ttft_s is not None and p.tpot_s is not None]
        figures.append(LayoutFigure(layout_label(layout), gpus, len(items), _best(measured, target),
                                    _best(predicted, target)))
    figures.sort(key=lambda f: (-f.measured, f.label))
    measured_best = figures[0]
    pick = max(sorted(figures, key=lambda f: f.label), key=lambda f: f.predicted)  # ties: by label
    recommended = pick if pick.predicted > 0 else None
    gap = (recommended.measured / measured_best.measured - 1.0) if recommended is not None else -1.0
    return FamilyFront(key, target, tuple(figures),
                       rank_agreement([f.measured for f in figures], [f.predicted for f in figures]),
                       recommended.label if recommended else None, measured_best.label, gap)


def compare_fronts(predictions: Iterable[PointPrediction]) -> list[FamilyFront]:
    """`family_front` of every family of the predicted points, in family order."""
    return [family_front(key, layouts) for key, layouts in families(predictions).items()]
