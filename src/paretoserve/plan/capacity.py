"""Maximum sustainable request rate under an SLO, by bisection on a rate → attainment function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Capacity:
    """Result of a capacity search.

    Attributes:
        rate_rps: the highest rate (requests/s) found whose attainment meets the target (0 if none).
        attainment: SLO attainment at that rate.
        evaluations: how many rates were simulated.
    """

    rate_rps: float
    attainment: float
    evaluations: int


def max_rate_under_slo(attainment_at: Callable[[float], float], *, target: float, low: float,
                       high: float, rel_tol: float = 0.02, max_evals: int = 20) -> Capacity:
    """Largest rate in [low, high] with `attainment_at(rate) >= target`, assuming attainment falls
    as rate grows. Expands `high` (doubling) while it still meets the target, then bisects
    geometrically until high/low − 1 ≤ `rel_tol`.
    """
    if low <= 0 or high <= low:
        raise ValueError("need 0 < low < high")
    evals = 0
    ok_rate, ok_att = 0.0, 0.0
    att = attainment_at(low)
    evals += 1
    if att < target:
        return Capacity(0.0, att, evals)
    ok_rate, ok_att = low, att
    while evals < max_evals:
        att = attainment_at(high)
        evals += 1
        if att < target:
            break
        ok_rate, ok_att, low, high = high, att, high, high * 2
    else:
        return Capacity(ok_rate, ok_att, evals)
    while high / low - 1 > rel_tol and evals < max_evals:
        mid = (low * high) ** 0.5
        att = attainment_at(mid)
        evals += 1
        if att >= target:
            ok_rate, ok_att, low = mid, att, mid
        else:
            high = mid
    return Capacity(ok_rate, ok_att, evals)
