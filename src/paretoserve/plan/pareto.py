"""Pareto fronts: non-dominated filtering and the knee point (all objectives minimised)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pareto_mask(points: Sequence[Sequence[float]]) -> list[bool]:
    """True for each point that no other point dominates (≤ in every objective, < in one).

    Objectives are minimised. Duplicated points are all kept. O(n² · d) with NumPy, fine for the
    thousands of plans a search produces.
    """
    if len(points) == 0:
        return []
    p = np.asarray(points, dtype=float)
    keep = np.ones(len(p), dtype=bool)
    for i in range(len(p)):
        no_worse = np.all(p <= p[i], axis=1)
        better = np.any(p < p[i], axis=1)
        if np.any(no_worse & better):
            keep[i] = False
    return keep.tolist()


def knee_index(points: Sequence[Sequence[float]]) -> int | None:
    """Index of the knee of a front: the point closest to the ideal point after scaling each
    objective to [0, 1] over the front (the usual "closest to utopia" rule). None when empty."""
    if len(points) == 0:
        return None
    p = np.asarray(points, dtype=float)
    lo, hi = p.min(axis=0), p.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = (p - lo) / span
    return int(np.argmin(np.linalg.norm(scaled, axis=1)))
