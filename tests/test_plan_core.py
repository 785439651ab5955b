"""Planner building blocks: the Pareto filter against brute force, and capacity bisection."""

from __future__ import annotations

import itertools
import random

import pytest

from paretoserve.plan.capacity import max_rate_under_slo
from paretoserve.plan.pareto import knee_index, pareto_mask


def brute_force_front(points):
    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    return [not any(dominates(q, p) for q in points if q is not p) for p in points]


@pytest.mark.parametrize("seed", range(20))
def test_pareto_mask_equals_brute_force(seed):
    rng = random.Random(seed)
    dims = rng.choice([2, 3, 4])
    # Integer coordinates make ties and duplicates common, the cases a filter gets wrong.
    points = [[rng.randint(0, 6) for _ in range(dims)] for _ in range(rng.randint(1, 60))]
    assert pareto_mask(points) == brute_force_front(points)


def test_knee_of_symmetric_front_is_middle():
    # Scaled to [0, 1]: distances to (0, 0) are 1, 0.54, 0.42, 0.54, 1.
    front = [(0.0, 10.0), (2.0, 5.0), (3.0, 3.0), (5.0, 2.0), (10.0, 0.0)]
    assert knee_index(front) == 2


def test_bisection_finds_known_capacity():
    # A queue that meets the SLO exactly up to 7.3 req/s.
    capacity = 7.3
    result = max_rate_under_slo(lambda r: 1.0 if r <= capacity else 0.5, target=0.9, low=0.5, high=1.0,
                                rel_tol=0.01)
    assert capacity / 1.01 <= result.rate_rps <= capacity
    assert result.evaluations < 20


def test_bisection_reports_zero_when_lowest_rate_fails():
    result = max_rate_under_slo(lambda r: 0.2, target=0.9, low=0.1, high=1.0)
    assert result.rate_rps == 0.0


def test_all_points_equal_all_on_front():
    points = [p for p in itertools.repeat((1, 2), 4)]
    assert pareto_mask(points) == [True] * 4
