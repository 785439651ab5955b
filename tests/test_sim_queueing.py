"""M/D/1 check: constant service time S (one 1-token request at a time, every step takes S),
Poisson arrivals at rate λ: the mean wait before service is ρ·S / (2(1 − ρ)), ρ = λS
(Pollaczek–Khinchine)."""

import numpy as np
import pytest

from paretoserve.perf.constant import LinearStepModel
from paretoserve.sim import simulate
from paretoserve.workload.request import Request


@pytest.mark.parametrize("rho", [0.5, 0.7])
def test_mean_wait_matches_pollaczek_khinchine(rho):
    service = 0.02
    rate = rho / service
    n = 80_000
    gaps = np.random.default_rng(3).exponential(1.0 / rate, n)
    arrivals = np.cumsum(gaps) - gaps[0]
    requests = (Request(str(i), float(t), 64, 1) for i, t in enumerate(arrivals))
    waits = [r.scheduled_s - r.arrival_s
             for r in simulate(requests, step_model=LinearStepModel(service), kv_tokens=1 << 20,
                               max_num_seqs=1)]
    assert len(waits) == n
    expected = rho * service / (2 * (1 - rho))
    assert np.mean(waits) == pytest.approx(expected, rel=0.05)
