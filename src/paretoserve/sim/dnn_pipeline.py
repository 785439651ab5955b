"""A linear pipeline of stages and links, simulated batch by batch (many pipelines at once, NumPy).

A partitioned model is a chain of resources: stage 0's compute, the link to stage 1, stage 1's
compute, ... Each resource serves one batch at a time, first come first served; a link transfers
while the stages on either side compute other batches. At most `in_flight` batches are inside the
chain at once (1 = sequential execution: a batch enters when the previous one has left). For batch b
and resource r, with service time t[b, r]:

    start[b, r] = max(done[b, r-1], done[b-1, r])          (done[b, -1] = entry of batch b)
    entry[b]    = done[b - in_flight, R-1]                  (0 for the first `in_flight` batches)

so the steady-state period is max(max_r t_r, Σ_r t_r / in_flight) for constant times, the
single-batch latency is Σ_r t_r, and sequential execution has period Σ_r t_r.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class PipelineRun:
    """Per pipeline: steady-state seconds per batch, and the last batch's completion time."""

    period_s: np.ndarray
    makespan_s: np.ndarray


def simulate_pipelines(times: np.ndarray, in_flight: int) -> PipelineRun:
    """Simulate pipelines with service times `times[c, b, r]` (seconds; c pipelines, b batches, r
    resources in chain order; zero-time resources are allowed).

    The period is measured over the second half of the batches: (done[N-1] − done[h-1]) / (N − h)
    with h = N // 2, which equals the steady-state period when the times are constant.
    """
    t = np.asarray(times, dtype=float)
    if t.ndim != 3 or t.shape[1] < 2 or in_flight < 1:
        raise ValueError("times must be [pipelines, batches >= 2, resources] and in_flight >= 1")
    c, n, r = t.shape
    done = np.zeros((n, r, c))
    for b in range(n):
        entry = done[b - in_flight, r - 1] if b >= in_flight else np.zeros(c)
        ready = entry
        for k in range(r):
            start = np.maximum(ready, done[b - 1, k]) if b else ready
            done[b, k] = start + t[:, b, k]
            ready = done[b, k]
    last = done[:, r - 1]  # [batch, pipeline]
    h = n // 2
    return PipelineRun(period_s=(last[n - 1] - last[h - 1]) / (n - h), makespan_s=last[n - 1])



def loop_period(busy_s: np.ndarray, latency_s: float, in_flight: int) -> float:
    """Steady-state seconds per batch of a route that visits resources repeatedly (attention offload:
    dense device, link, attention device, link, once per layer) with `in_flight` batches in the loop:
    max(busiest resource's seconds per batch, latency / in_flight), the same bound the linear chain
    above reaches with constant times."""
    if in_flight < 1:
        raise ValueError("in_flight must be >= 1")
    return max(float(np.max(busy_s)), latency_s / in_flight)
