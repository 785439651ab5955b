"""Routing imbalance of expert parallelism: how many (token, expert) selections the busiest EP rank
gets.

Model: each of the n = tokens × top_k selections of a MoE layer lands on one of R EP ranks uniformly
and independently (multinomial routing; it ignores that one token's top-k experts are distinct).
The step waits for the busiest rank, so the load that counts is E[max of the R counts]:

- exactly, for n ≤ `EXACT_LIMIT`: P(max ≤ m) by a recursion over ranks (the first rank's count is
  Binomial(k, 1/r) of the k selections left for r ranks), E[max] = Σ_m (1 − P(max ≤ m));
- above it, approximately, treating the R counts as independent Binomial(n, 1/R): P(max ≤ m) ≈
  F(m)^R (within 3% of the exact value at the limit; tests/test_moe_routing.py).

Real routers are skewed: `Routing.skew` multiplies the max/mean ratio (capped at R, all load on one
rank). Measured for DeepSeek-R1 at EP32 with 256 tokens per rank (TensorRT-LLM tech blog 4,
engine_facts.md §7): max/mean per rank 2.56 without EPLB where multinomial routing gives 1.05, so
skew ≈ 2.45 there; 1.11 with EPLB (one redundant expert per rank).

EPLB (`redundant_experts` r > 0): the balancer replicates the hottest experts, which removes the
systematic skew in proportion to r / R (all of it with at least one redundant expert per rank),
leaving the multinomial imbalance; each rank then holds (E + r) / R expert slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import binom

from paretoserve.errors import UserError

#: Largest number of selections for which the expected maximum is computed exactly.
EXACT_LIMIT = 64


@dataclass(frozen=True, slots=True)
class Routing:
    """How selections spread over EP ranks (module docstring).

    Attributes:
        skew: multiplier on the busiest rank's max/mean load ratio (1 = multinomial routing).
        redundant_experts: EPLB redundant expert slots in total over the EP ranks (0 = no EPLB).
    """

    skew: float = 1.0
    redundant_experts: int = 0

    def __post_init__(self) -> None:
        if not self.skew >= 1.0:
            raise UserError(f"routing skew must be >= 1, got {self.skew}", field="moe_skew")
        if self.redundant_experts < 0:
            raise UserError(f"redundant experts must be >= 0, got {self.redundant_experts}",
                            field="eplb_redundant")

    def effective_skew(self, ranks: int) -> float:
        """The skew left after EPLB: reduced linearly to 1 as redundant experts reach one per rank."""
        cover = min(1.0, self.redundant_experts / ranks) if ranks else 1.0
        return 1.0 + (self.skew - 1.0) * (1.0 - cover)

    def max_over_mean(self, selections: int, ranks: int) -> float:
        """Busiest rank's load ÷ the mean load, for `selections` selections over `ranks` ranks."""
        if ranks <= 1 or selections <= 0:
            return 1.0
        ratio = expected_max_load(selections, ranks) * ranks / selections
        return min(float(ranks), ratio * self.effective_skew(ranks))


@lru_cache(maxsize=65536)
def expected_max_load(selections: int, ranks: int) -> float:
    """E[max over `ranks` ranks of the selections each gets], multinomial routing (module docstring)."""
    n, r = int(selections), int(ranks)
    if n <= 0:
        return 0.0
    if r <= 1:
        return float(n)
    if n <= EXACT_LIMIT:
        return _exact_expected_max(n, r)
    mean = n / r
    sd = (n * (1 / r) * (1 - 1 / r)) ** 0.5
    lo = int(mean)
    hi = min(n, int(mean + 12 * sd + 12))
    m = np.arange(lo, hi + 1)
    tail = 1.0 - binom.cdf(m, n, 1 / r) ** r
    return float(lo + tail.sum())  # E[max] = Σ_{m ≥ 0} P(max > m); P(max > m) = 1 below the mean


def _exact_expected_max(n: int, r: int) -> float:
    """E[max] exactly: Σ_m (1 − P(max ≤ m)), P(max ≤ m) by the recursion over ranks (vectorised)."""
    k = np.arange(n + 1)
    j = k[:, None]
    rest = k[None, :] - j                    # selections left for the other ranks
    valid = rest >= 0
    pmf = {ranks: np.where(valid, binom.pmf(j, k[None, :], 1.0 / ranks), 0.0) for ranks in range(2, r + 1)}
    rest = np.clip(rest, 0, None)
    total = float(-(-n // r))                # P(max ≤ m) = 0 for m < ceil(n / r)
    for m in range(-(-n // r), n):
        f = (k <= m).astype(float)           # one rank: all k selections land on it
        upto = (j <= m)
        for ranks in range(2, r + 1):
            f = (pmf[ranks] * upto * f[rest]).sum(axis=0)
        p = float(f[n])
        total += 1.0 - p
        if p >= 1.0 - 1e-15:
            break
    return total
